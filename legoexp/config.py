"""Settings: defaults from ``conf/``, overridden by an experiment file, overridden by options.

Each command names its settings once, as ``Setting`` checks; ``conf/<command>.yaml`` gives their
defaults and an ``experiments/*.yaml`` file (``--config``) may override any of them. A key that
is not a known setting, or a value of the wrong type or range, is a ``ConfigError`` naming the
file and the key: a typo never silently falls back to a default.
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from legoexp.errors import ConfigError, first_line

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass(frozen=True)
class Setting:
    kind: type  # int, float or str
    check: Callable[[Any], bool] = lambda v: True
    expected: str = ""

    def coerce(self, key: str, value, where: str):
        try:
            value = _CONVERT[self.kind](value)
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


def int_range(lo: int, hi: int) -> Setting:
    return Setting(int, lambda v: lo <= v <= hi, f"an integer {lo}..{hi}")


def positive_float(hi: float = math.inf) -> Setting:
    return Setting(float, lambda v: math.isfinite(v) and 0 < v <= hi, f"a number > 0 and <= {hi:g}")


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


def resolve(command: str, settings: Mapping[str, Setting], config_file: str | None,
            options: Mapping[str, Any]) -> dict:
    """Defaults of ``conf/<command>.yaml``, then ``config_file``, then options that are not None."""
    defaults_path = CONF_DIR / f"{command}.yaml"
    values = read_yaml(defaults_path)
    if set(values) != set(settings):  # conf/ and the code disagree: a bug, not a user error
        raise RuntimeError(f"{defaults_path} keys {sorted(values)} != settings {sorted(settings)}")
    layers = [(str(defaults_path), values)]
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
