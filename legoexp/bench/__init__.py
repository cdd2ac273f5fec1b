"""``python -m legoexp.bench``: legoexp's speed against its peers, measured in one run.

``__main__``: the benchmark. ``peers``: what it compares with: the lab's own loop, the same net in
NumPy, and the straightforward Optuna + MLflow sweep (``python -m legoexp.bench.peers``). ``skilled``:
the same study written by a practised user with documented parts only (``python -m legoexp.bench.skilled``).
"""
