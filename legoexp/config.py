"""The one settings schema: every setting of a run, declared once, and where each value comes from.

``SETTINGS`` declares each setting's name, type, range and help. Its defaults are the files of
``conf/`` (``conf/baseline.yaml`` holds the lab's hyperparameters, ``conf/sweep.yaml`` the sweep's
settings), which a user edits; an ``experiments/*.yaml`` file (``--config``) overrides them, and
options override both. ``COMMANDS`` says which settings each command takes. Everything else is
derived from here: a command's options and their help (``add_options``), the check of ``conf/``
and experiment files (``resolve``: a key that is not a known setting, or a value of the wrong type
or range, is a ``ConfigError`` naming the file and the key), ``TrainConfig`` (the hyperparameters
of one fit, logged as a run's params), the keys a search space must have (``SEARCHED``), and
reading a configuration back from a run's params or a version's tags (``read_config``).
"""

import argparse
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

import yaml

from legoexp.errors import ConfigError, first_line

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass(frozen=True)
class Setting:
    kind: type  # int, float or str
    help: str
    check: Callable[[Any], bool] = lambda v: True
    expected: str = ""
    searched: bool = False  # a hyperparameter that the sweep's search space varies
    convert: Callable[[Any], Any] | None = None  # from YAML or the command line; default: by ``kind``

    def coerce(self, key: str, value, where: str):
        try:
            value = (self.convert or _CONVERT[self.kind])(value)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: {key}={value!r}; expected {self.description}") from None
        if not self.check(value):
            raise ConfigError(f"{where}: {key}={value!r}; expected {self.description}")
        return value

    @property
    def description(self) -> str:
        return self.expected or f"a {self.kind.__name__}"


def _to_int(value) -> int:
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError(value)
    return int(value)  # ints, and strings of digits from the command line or MLproject


def _to_float(value) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value)  # also takes YAML's '4e-2', which PyYAML reads as a string


_CONVERT = {int: _to_int, float: _to_float, str: str}


def int_range(lo: int, hi: int, help: str, searched: bool = False) -> Setting:
    return Setting(int, help, lambda v: lo <= v <= hi, f"an integer {lo}..{hi}", searched)


def positive_float(hi: float, help: str, searched: bool = False) -> Setting:
    return Setting(float, help, lambda v: math.isfinite(v) and 0 < v <= hi, f"a number > 0 and <= {hi:g}", searched)


def name(help: str) -> Setting:
    return Setting(str, help, bool, "a non-empty name")


def one_of(choices: tuple[str, ...], help: str) -> Setting:
    return Setting(str, help, lambda v: v in choices, f"one of {', '.join(choices)}")


def _to_names(value) -> str:
    """A YAML list, or the command line's comma-separated text, as ``a,b``."""
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise ValueError(value)
        value = ",".join(value)
    if not isinstance(value, str):
        raise ValueError(value)
    return ",".join(v.strip() for v in value.split(","))


OBJECTIVES = ("accuracy", "params")  # what a study can optimise: CV accuracy (max), the net's parameter count (min)
SELECT_RULES = ("best", "simplest-within", "rescored")  # which trial a sweep ships: legoexp.selection


SETTINGS: dict[str, Setting] = {
    # where the data comes from
    "data": Setting(str, "'synthetic' (the built-in generated set), 'synthetic:SEED', a directory holding the "
                         "lab's lego-simple-mx-train and -test, or one holding train.npz and test.npz"),
    # the hyperparameters of one fit: TrainConfig's fields, every run's params
    "epochs": int_range(1, 10_000, "passes over the training data"),
    "lr": positive_float(1e6, "SGD learning rate", searched=True),
    "batch_size": int_range(1, 1_000_000, "images per SGD step", searched=True),
    "hidden1": int_range(1, 16_384, "units of the first hidden layer", searched=True),
    "hidden2": int_range(1, 16_384, "units of the second hidden layer", searched=True),
    "seed": int_range(0, 2**31 - 1, "seed of the initial weights and the shuffles (the sweep's: also of its sampler "
                                    "and folds; the comparison's seeds are seed..seed+seeds-1)"),
    # the sweep
    "trials": int_range(1, 100_000, "finished (complete or pruned) trials the study must reach"),
    "folds": int_range(2, 100, "cross-validation folds of the training split"),
    "seeds": int_range(2, 100, "seeds of the final baseline-vs-best comparison"),
    "timeout": Setting(float, "stop the whole command's search after this many seconds, --jobs workers included "
                              "(0: no limit)", lambda v: v >= 0, "seconds >= 0 (0 = no limit)"),
    "study_name": name("the Optuna study (and its parent run's name); rerun with the same name to resume"),
    "storage": Setting(str, "Optuna storage: a URL (sqlite:///optuna.db, postgresql+psycopg2://USER@HOST/DB), "
                            "journal:PATH or a PATH ending in .journal; '' = a journal file beside the MLflow store"),
    "experiment_name": name("MLflow experiment (ignored under `mlflow run`, which picks its own)"),
    "model_name": name("registered model to add the best model to"),
    "search_space": Setting(str, "a search-space YAML file; '' = conf/search_space.yaml"),
    "jobs": int_range(1, 256, "worker processes on this machine sharing the study (1: trials run here, their "
                              "folds in parallel)"),
    "heartbeat": int_range(1, 3600, "seconds between a running trial's heartbeats; a trial silent for 3 heartbeats "
                                    "is failed and redone by the others"),
    "objectives": Setting(str, "what the study optimises: accuracy (cross-validated, maximised), or accuracy,params "
                               "(also the net's parameter count, minimised: a multi-objective study, not pruned)",
                          lambda v: v in ("accuracy", "accuracy,params"),
                          "[accuracy] or [accuracy, params] (on the command line: accuracy or accuracy,params)",
                          convert=_to_names),
    "select": one_of(SELECT_RULES, "which trial to compare and register (docs/selection.md): best (the highest "
                                   "search CV), simplest-within (the smallest candidate within --tolerance of the "
                                   "most accurate, re-scored), rescored (the most accurate candidate, re-scored)"),
    "tolerance": Setting(float, "simplest-within: the test accuracy a smaller candidate may lose; its paired "
                                "difference from the most accurate must have a 95% lower bound above -tolerance",
                         lambda v: 0 < v < 1, "a number > 0 and < 1"),
    "top_k": int_range(2, 1000, "candidates of a single-objective study that the rules re-score: the top-k trials "
                                "by search CV (a multi-objective study's are its Pareto front)"),
    "repeats": int_range(1, 100, "repeats of the re-scoring's stratified k-fold CV of the training split, each "
                                 "with fresh fold and training seeds (seed+1, seed+2, ...)"),
    "wait": int_range(0, 86_400, "with --worker: seconds to wait for a main sweep to create the study's parent run"),
}
HYPERPARAMETERS = ("epochs", "lr", "batch_size", "hidden1", "hidden2", "seed")
SEARCHED = tuple(key for key in HYPERPARAMETERS if SETTINGS[key].searched)
COMMANDS = {  # the settings each command takes; conf/<command>.yaml holds a default for each
    "baseline": ("data", *HYPERPARAMETERS),
    "sweep": ("data", "trials", "folds", "seeds", "epochs", "seed", "timeout", "study_name", "storage",
              "experiment_name", "model_name", "search_space", "jobs", "heartbeat", "wait", "objectives", "select",
              "tolerance", "top_k", "repeats"),
}


def settings(command: str) -> dict[str, Setting]:
    return {key: SETTINGS[key] for key in COMMANDS[command]}


def read_yaml(path: Path) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({first_line(e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def defaults(command: str) -> dict:
    """``conf/<command>.yaml``, checked against the schema."""
    path = CONF_DIR / f"{command}.yaml"
    values = read_yaml(path)
    if set(values) != set(COMMANDS[command]):  # conf/ and the schema disagree
        raise ConfigError(f"{path}: expected exactly the keys {', '.join(COMMANDS[command])}, got {', '.join(values)}")
    return {key: SETTINGS[key].coerce(key, value, str(path)) for key, value in values.items()}


def resolve(command: str, settings: Mapping[str, Setting], config_file: str | None,
            options: Mapping[str, Any]) -> dict:
    """Defaults of ``conf/<command>.yaml``, then ``config_file``, then options that are not None."""
    layers = [(str(CONF_DIR / f"{command}.yaml"), defaults(command))]
    if config_file:
        layers.append((config_file, read_yaml(Path(config_file))))
    layers.append(("command line", {k: v for k, v in options.items() if v is not None}))
    resolved: dict = {}
    for where, layer in layers:
        for key, value in layer.items():
            if key not in settings:
                raise ConfigError(f"{where}: unknown key {key!r}; expected one of {', '.join(settings)}")
            resolved[key] = settings[key].coerce(key, value, where)
    return resolved


def model_name() -> str:
    """The registered model a sweep adds to (``model_name`` of ``conf/sweep.yaml``): the default of the
    commands that read or manage it (promote, predict, access)."""
    return defaults("sweep")["model_name"]


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """An option per setting of ``command`` (``--batch-size``, also ``--batch_size``: what ``mlflow run -P
    batch_size=...`` passes on), its help showing the default that ``conf/<command>.yaml`` gives, and
    ``--config``."""
    shown = read_yaml(CONF_DIR / f"{command}.yaml")
    for key in COMMANDS[command]:
        flags = dict.fromkeys([f"--{key.replace('_', '-')}", f"--{key}"])
        setting = SETTINGS[key]
        parser.add_argument(*flags, dest=key, type=setting.kind, metavar=key.upper(),
                            help=f"{setting.help} (default: {shown.get(key)!r})".replace("%", "%%"))
    parser.add_argument("--config", metavar="FILE", type=lambda text: text or None,
                        help="an experiments/*.yaml file of overrides ('' = none)")


def options(args: argparse.Namespace, command: str) -> dict:
    return {key: getattr(args, key) for key in COMMANDS[command]}


@functools.cache  # read once a process: every trial's fit asks for it
def _lab_defaults() -> dict:
    try:
        values = defaults("baseline")
    except ConfigError:  # reported with its file and key by any command that reads conf/baseline.yaml
        return {}
    return {key: values[key] for key in HYPERPARAMETERS}


TrainConfig = make_dataclass(
    "TrainConfig",
    [(key, SETTINGS[key].kind, field(default=default)) if (default := _lab_defaults().get(key)) is not None
     else (key, SETTINGS[key].kind) for key in HYPERPARAMETERS],
    frozen=True,
    namespace={"as_params": lambda self: asdict(self),
               "__doc__": "The hyperparameters of one fit (``HYPERPARAMETERS``); defaults: conf/baseline.yaml."})
TrainConfig.__module__ = __name__  # pickled to the fold processes by this name


def sweep_config(cfg: Mapping, point: Mapping) -> TrainConfig:
    """A fit of the sweep: the lab's hyperparameters, the sweep's own (``epochs``, ``seed``), and a point of
    the search space (a trial's, or the lab's for the baseline)."""
    lab = _lab_defaults()
    return TrainConfig(**{key: cfg.get(key, lab.get(key)) for key in HYPERPARAMETERS if key not in point}, **point)


def read_config(values: Mapping[str, str], prefix: str = "", keys=HYPERPARAMETERS) -> dict:
    """The hyperparameters ``keys`` as logged (a run's params ``<prefix><key>``, a version's tags), typed;
    KeyError or ValueError for one that is missing or not of its type."""
    return {key: SETTINGS[key].kind(values[prefix + key]) for key in keys}
