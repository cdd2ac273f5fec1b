"""Settings: conf/ defaults, experiment-file overrides, options; unknown keys and bad values refused."""

import pytest

from legoexp import config
from legoexp.baseline import SETTINGS
from legoexp.errors import ConfigError


def test_defaults_are_the_labs_hyperparameters():
    cfg = config.resolve("baseline", SETTINGS, None, {})
    assert cfg == {"data": "synthetic", "epochs": 10, "lr": 0.04, "batch_size": 34,
                   "hidden1": 128, "hidden2": 64, "seed": 42}


def test_a_config_file_overrides_defaults_and_options_override_the_file(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("epochs: 3\nlr: 4e-2\nseed: 1\n")
    cfg = config.resolve("baseline", SETTINGS, str(f), {"seed": 5, "hidden1": None})
    assert (cfg["epochs"], cfg["lr"], cfg["seed"], cfg["hidden1"]) == (3, 0.04, 5, 128)


@pytest.mark.parametrize("text, message", [
    ("epochz: 3\n", "unknown key 'epochz'"),
    ("epochs: 2.5\n", "epochs=2.5; expected an integer"),
    ("epochs: 0\n", "epochs=0; expected an integer 1..10000"),
    ("lr: -1\n", "lr=-1.0; expected a number > 0"),
    ("lr: .nan\n", "lr=nan"),
    ("batch_size: true\n", "batch_size=True"),
    ("- a list\n", "expected a mapping"),
    ("epochs: [1\n", "not valid YAML"),
])
def test_bad_config_files_are_refused_naming_file_and_key(tmp_path, text, message):
    f = tmp_path / "exp.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        config.resolve("baseline", SETTINGS, str(f), {})
    assert str(f) in str(e.value)


def test_a_missing_config_file_is_named():
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        config.resolve("baseline", SETTINGS, "nope.yaml", {})
