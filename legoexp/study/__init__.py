"""The Optuna study of a sweep and everything that runs it.

``design``: the search space, the sampler, the pruner, and the baseline as the first trial.
``search``: the search driver (the parent run, the loop, one trial's life). ``folds``: the
stratified cross-validation folds and the fold processes that train them. ``storage``: where the
study lives and the study-wide lock. ``claims``: which process runs which trial, heartbeats, and
failing the trials of dead processes. ``progress``: what a running sweep prints. ``workers``: the
sweep processes that ``--jobs`` starts (each one a ``--worker``). Kept light: a fold process
imports ``legoexp.study.folds`` without Optuna or MLflow.
"""
