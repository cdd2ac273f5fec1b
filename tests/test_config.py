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


def test_conf_files_hold_exactly_the_settings_of_their_command():
    for command in config.COMMANDS:
        assert set(config.defaults(command)) == set(config.settings(command))


def test_train_config_is_the_schemas_hyperparameters_with_the_labs_defaults():
    from dataclasses import fields

    from legoexp.train import TrainConfig

    assert [f.name for f in fields(TrainConfig)] == list(config.HYPERPARAMETERS)
    lab = config.defaults("baseline")
    assert TrainConfig().as_params() == {k: lab[k] for k in config.HYPERPARAMETERS}


def test_the_search_space_holds_exactly_the_searched_hyperparameters():
    from legoexp.study import design

    assert set(design.load_space()) == set(config.SEARCHED) and "epochs" not in config.SEARCHED


def test_a_sweeps_fit_takes_the_labs_hyperparameters_the_sweeps_own_and_the_point():
    lab = config.defaults("baseline")
    fit = config.sweep_config({"epochs": 3, "seed": 9, "trials": 30}, {"lr": 0.1, "hidden1": 40})
    assert fit.as_params() == {"epochs": 3, "lr": 0.1, "batch_size": lab["batch_size"], "hidden1": 40,
                               "hidden2": lab["hidden2"], "seed": 9}


def test_a_config_reads_back_from_logged_strings_with_the_schemas_types():
    logged = {"best_epochs": "10", "best_lr": "0.04", "best_batch_size": "34", "best_hidden1": "128",
              "best_hidden2": "64", "best_seed": "42"}
    assert config.read_config(logged, "best_") == {"epochs": 10, "lr": 0.04, "batch_size": 34, "hidden1": 128,
                                                    "hidden2": 64, "seed": 42}
    with pytest.raises(ValueError):
        config.read_config({**logged, "best_epochs": "ten"}, "best_")


@pytest.mark.parametrize("command", ["baseline", "sweep"])
def test_help_shows_every_settings_real_default_from_conf(command):
    from conftest import run_module

    proc = run_module(f"legoexp.{command}", "--help", env={**__import__("os").environ, "COLUMNS": "500"})
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for key, value in config.read_yaml(config.CONF_DIR / f"{command}.yaml").items():
        assert f"--{key.replace('_', '-')}" in text and f"(default: {value!r})" in text, key
    assert "default: conf/" not in text


def test_an_option_may_be_given_with_underscores_as_mlflow_run_passes_it():
    from legoexp import baseline

    args = baseline.parse_args(["--batch_size", "16", "--batch-size", "17", "--config", ""])
    assert args.batch_size == 17 and args.config is None
