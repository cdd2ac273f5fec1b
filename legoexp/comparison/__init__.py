"""Best vs baseline, with evidence: the one home of the comparison.

``fits``: train both configurations ("arms") over the same seeds and score each once on the test
split (pure: no MLflow). ``stats``: the paired statistics (pure). ``runs``: log a comparison run
and read it back, and find the evidence for a promotion. ``report``: what a finished sweep does
with its best trial: compare, log, register.
"""
