"""The Optuna study of a sweep: search space, sampler, pruner, and the baseline as its first trial.

The search space is read from ``conf/search_space.yaml`` and must contain the lab's baseline,
which every study runs first. Sampling is seeded TPE (multivariate, constant liar for parallel
workers); pruning is Optuna's ``WilcoxonPruner``, made for objectives that average over folds.
Where the study lives is ``storage``'s business, who runs which trial ``claims``'.
"""

from pathlib import Path

import optuna
from optuna.trial import TrialState

from legoexp.config import CONF_DIR, SEARCHED, read_yaml
from legoexp.errors import ConfigError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials that --trials counts
SPACE_KEYS = set(SEARCHED)  # the searched hyperparameters of the settings schema


def load_space(path: Path | None = None) -> dict:
    path = path or CONF_DIR / "search_space.yaml"
    space = read_yaml(path)
    if set(space) != SPACE_KEYS:
        raise ConfigError(f"{path}: expected exactly the keys {sorted(SPACE_KEYS)}, got {sorted(space)}")
    for name, spec in space.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        keys = {"int": {"type", "low", "high", "log"}, "float": {"type", "low", "high", "log"},
                "categorical": {"type", "choices"}}.get(kind)
        if keys is None or not set(spec) <= keys or not set(spec) >= keys - {"log"}:
            raise ConfigError(f"{path}: {name}: expected {{type: int|float, low, high, log}} or "
                              "{type: categorical, choices: [...]}")
    return space


def check_contains(space: dict, params: dict, where: str) -> None:
    """The baseline must be a point of the space, or the study could not run it."""
    for name, spec in space.items():
        value = params[name]
        inside = (value in spec["choices"]) if spec["type"] == "categorical" else spec["low"] <= value <= spec["high"]
        if not inside:
            raise ConfigError(f"{where}: {name}={value} of the baseline lies outside the search space {spec}")


def suggest(trial: optuna.Trial, space: dict) -> dict:
    params = {}
    for name, spec in space.items():
        if spec["type"] == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
        elif spec["type"] == "float":
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
        else:
            params[name] = trial.suggest_categorical(name, spec["choices"])
    return params


def create_study(name: str, storage, seed: int, baseline: dict, objectives: str = "accuracy") -> optuna.Study:
    """Load or make the study. ``objectives``: ``accuracy`` (maximised, the folds pruned by Wilcoxon) or
    ``accuracy,params`` (also the net's parameter count, minimised: Optuna prunes no multi-objective
    trial, so every trial trains all its folds)."""
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    multi = is_multi(objectives)
    pruner = optuna.pruners.NopPruner() if multi else optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    directions = ["maximize", "minimize"] if multi else ["maximize"]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions,
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        made = "accuracy,params" if len(study.directions) == 2 else "accuracy"
        raise ConfigError(f"study {name!r} was run with objectives={made!r}: rerun it with the same objectives, "
                          "or start a new study with another --study-name")
    if multi and study.metric_names is None:
        study.set_metric_names(list(METRIC_NAMES))  # optuna-dashboard's axes
    alive = FINISHED + (TrialState.RUNNING, TrialState.WAITING)
    if not any(t.params == baseline or t.system_attrs.get("fixed_params") == baseline
               for t in study.get_trials(deepcopy=False, states=alive)):
        study.enqueue_trial(baseline, user_attrs={"baseline": True})
    return study


METRIC_NAMES = ("val_accuracy", "param_count")  # a multi-objective study's values


def is_multi(objectives: str) -> bool:
    return objectives == "accuracy,params"


def accuracy(trial) -> float:
    """A complete trial's cross-validated accuracy, in a single- or multi-objective study."""
    return trial.values[0]


def fold_accuracies(trial) -> list[float]:
    """A trial's folds' accuracies: reported to the pruner, or (a multi-objective study) kept in a user attribute."""
    return trial.user_attrs.get("fold_accuracies") or [trial.intermediate_values[k]
                                                      for k in sorted(trial.intermediate_values)]


def param_count(params: dict) -> int:
    """The parameter count of a point of the search space's net (``model.size``)."""
    from legoexp.model import size  # MXNet, for the processes that ask

    return size(params["hidden1"], params["hidden2"])["param_count"]


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))
