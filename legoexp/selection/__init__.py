"""Which model to ship: the candidates of a study, the rules that pick one, and how sure to be of it.

``rules`` (the candidates, smallest first, and the ``best`` / ``simplest-within`` / ``rescored``
rules), ``rescore`` (the candidates cross-validated again on fresh folds of the training split,
their latency measured, all logged as the study's ``rescoring`` run), ``latency`` (a net's forward
pass timed in process) and ``optimism`` (search CV against test: the winner's curse, measured).
The comparison with the baseline that follows is ``comparison``'s; see docs/selection.md.
"""
