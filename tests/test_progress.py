"""What a sweep shows while it runs: one line per trial and fit in a log, a bar in a terminal, nothing with --quiet."""

import fcntl
import os
import re
import select
import struct
import termios
import uuid
from pathlib import Path
from unittest.mock import ANY

import optuna
import pytest
from conftest import run_module
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from legoexp.study import progress

TRIAL_LINE = re.compile(r"^trial (\d+) +(complete|pruned after fold \d+|failed: .+?) +(?:val_accuracy (\S+) +)?"
                        r"best (\S+)(?: \(trial (\d+)\))? +elapsed +[\d.]+ s  (\d+) left$")


def _study_with(*trials) -> optuna.Study:
    """A real in-memory study holding ``trials`` (finished ones get their end time as they are added)."""
    study = optuna.create_study(direction="maximize")
    for trial in trials:
        study.add_trial(trial)
    return study


COMPLETE_60 = create_trial(value=0.60)
PRUNED = create_trial(state=TrialState.PRUNED, intermediate_values={0: 0.2, 1: 0.1, 2: 0.2, 3: 0.1})
FAILED = create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "training loss became nan at epoch 2"})
COMPLETE_70 = create_trial(value=0.70)


class _Pipe:
    """A real pipe as the progress stream: what a log (CI, ``| tee``) is."""

    def __init__(self):
        read, write = os.pipe()
        self.reader, self.stream = os.fdopen(read, "r"), os.fdopen(write, "w")

    def lines(self) -> list[str]:
        self.stream.close()
        return self.reader.read().splitlines()


def test_in_a_log_each_finished_trial_is_one_line_with_its_outcome_the_best_so_far_and_what_is_left():
    study = _study_with(COMPLETE_60)
    pipe = _Pipe()
    shown = progress.Trials(5, study.get_trials(), stream=pipe.stream)
    for trial in (PRUNED, FAILED, COMPLETE_70):
        study.add_trial(trial)
        shown.update(study.get_trials())
    shown.update(study.get_trials())  # nothing new: no line
    shown.close()
    lines = pipe.lines()
    assert lines[0] == "resuming: 1 of 5 trials finished before"
    parsed = [TRIAL_LINE.match(line).groups() for line in lines[1:]]
    assert parsed == [("1", "pruned after fold 4", None, "0.6000", "0", "3"),
                      ("2", "failed: training loss became nan at epoch 2", None, "0.6000", "0", "3"),
                      ("3", "complete", "0.7000", "0.7000", "3", "2")]


def test_a_trial_that_finishes_after_later_ones_is_still_shown_once_and_counted():
    study = _study_with(COMPLETE_60)
    pipe = _Pipe()
    shown = progress.Trials(4, study.get_trials(), stream=pipe.stream)
    running = study.ask()  # trial 1, still running while trials 2 and 3 finish
    study.add_trial(PRUNED)
    shown.update(study.get_trials())
    study.add_trial(COMPLETE_70)
    shown.update(study.get_trials())
    study.tell(running, 0.65)
    shown.update(study.get_trials())
    shown.update(study.get_trials())  # nothing new: no line
    shown.close()
    parsed = [TRIAL_LINE.match(line).groups() for line in pipe.lines()[1:]]
    assert parsed == [("2", "pruned after fold 4", None, "0.6000", "0", "2"),
                      ("3", "complete", "0.7000", "0.7000", "3", "1"),
                      ("1", "complete", "0.6500", "0.7000", "3", "0")]
    assert (shown.done, shown.pruned) == (4, 1)


def test_a_trial_line_before_any_complete_trial_says_there_is_no_best_yet():
    study = _study_with()
    pipe = _Pipe()
    shown = progress.Trials(2, study.get_trials(), stream=pipe.stream)
    study.add_trial(PRUNED)
    shown.update(study.get_trials())
    [line] = pipe.lines()
    assert TRIAL_LINE.match(line).groups() == ("0", "pruned after fold 4", None, "-", None, "1")


def _terminal() -> tuple[int, int]:
    """A real pseudo-terminal (master, slave), 120 columns wide like a user's (a new one is 0x0)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    return master, slave


def _drawn(master: int) -> str:
    """What has been written to a terminal so far (writes are flushed: it is all there already)."""
    drawn = b""
    while select.select([master], [], [], 0.2)[0]:
        drawn += os.read(master, 4096)
    return drawn.decode()


def test_in_a_terminal_the_bar_shows_the_count_and_the_best_and_no_lines():
    master, slave = _terminal()
    with os.fdopen(slave, "w") as terminal:
        study = _study_with(COMPLETE_60)
        shown = progress.Trials(4, study.get_trials(), stream=terminal)
        study.add_trial(PRUNED)
        shown.update(study.get_trials())
        shown.close()
        text = _drawn(master)
    os.close(master)
    assert "trials:" in text and "2/4" in text and "pruned 1, best val_accuracy 0.6000" in text
    assert "trial 1 " not in text


def test_quiet_shows_nothing_in_a_log_or_a_terminal():
    master, slave = _terminal()
    pipe = _Pipe()
    with os.fdopen(slave, "w") as terminal:
        for stream in (pipe.stream, terminal):
            trials, fits = progress.Trials(2, [], quiet=True, stream=stream), progress.Fits(2, quiet=True, stream=stream)
            trials.update(_study_with(COMPLETE_60).get_trials())
            fits("baseline seed 42: test_accuracy 0.5000")
            trials.close()
        assert _drawn(master) == ""
    os.close(master)
    assert pipe.lines() == []


def test_the_comparison_s_fits_are_one_line_each_in_a_log_and_a_bar_in_a_terminal():
    pipe = _Pipe()
    fits = progress.Fits(2, stream=pipe.stream)
    fits("baseline seed 42: test_accuracy 0.5000")
    fits("best seed 42: test_accuracy 0.6000")
    assert [line.split() for line in pipe.lines()] == [
        ["fit", "1/2", "baseline", "seed", "42:", "test_accuracy", "0.5000", "elapsed", ANY, "s", "1", "left"],
        ["fit", "2/2", "best", "seed", "42:", "test_accuracy", "0.6000", "elapsed", ANY, "s", "0", "left"]]
    master, slave = _terminal()
    with os.fdopen(slave, "w") as terminal:
        fits = progress.Fits(2, stream=terminal)
        fits("baseline seed 42: test_accuracy 0.5000")
        fits("best seed 42: test_accuracy 0.6000")
        text = _drawn(master)
    os.close(master)
    assert "fits:" in text and "2/2" in text and "best seed 42: test_accuracy 0.6000" in text and "left" not in text


@pytest.mark.slow
def test_a_sweep_logging_to_a_pipe_prints_a_line_per_trial_and_per_fit_matching_the_study(mlflow_env, tracking_uri,
                                                                                         tmp_path):
    space = tmp_path / "space.yaml"  # the lab's net; lr decides the outcome: fits, learns nothing (pruned), diverges
    space.write_text("hidden1: {type: categorical, choices: [128]}\nhidden2: {type: categorical, choices: [64]}\n"
                     "lr: {type: categorical, choices: [0.04, 0.0001, 100000.0]}\n"
                     "batch_size: {type: categorical, choices: [34]}\n")
    study_name = f"study-{uuid.uuid4().hex[:8]}"
    proc = run_module("legoexp.sweep", "--trials", "5", "--folds", "5", "--seeds", "2", "--epochs", "2",
                      "--search-space", space, "--study-name", study_name, "--experiment-name", study_name,
                      env=mlflow_env)  # stdout and stderr are pipes
    assert proc.returncode == 0, proc.stderr
    journal = Path(tracking_uri[len("sqlite:///"):]).parent / "optuna.journal"  # beside the MLflow store
    storage = JournalStorage(JournalFileBackend(str(journal)))
    trials = {t.number: t for t in optuna.load_study(study_name=study_name, storage=storage).get_trials()}

    lines = [TRIAL_LINE.match(line) for line in proc.stderr.splitlines() if line.startswith("trial ")]
    assert all(lines) and len(lines) == len(trials)
    best, left = None, 5
    for match in lines:
        number, outcome, value, best_value, best_trial, shown_left = match.groups()
        trial = trials[int(number)]
        if trial.state == TrialState.COMPLETE:
            assert outcome == "complete" and float(value) == pytest.approx(trial.value, abs=5e-5)
            best = trial if best is None or trial.value > best.value else best
            left -= 1
        elif trial.state == TrialState.PRUNED:
            assert outcome == f"pruned after fold {len(trial.intermediate_values)}" and value is None
            left -= 1
        else:
            assert outcome == f"failed: {trial.user_attrs['fail_reason']}" and value is None
        assert (int(best_trial), float(best_value)) == (best.number, pytest.approx(best.value, abs=5e-5))
        assert int(shown_left) == left
    assert left == 0
    outcomes = {m.group(2).split(" ")[0] for m in lines}
    assert outcomes == {"complete", "pruned", "failed:"}, proc.stderr  # the space was made to give all three

    fits = [line for line in proc.stderr.splitlines() if line.startswith("fit ")]
    assert [line.split()[1] for line in fits] == ["1/4", "2/4", "3/4", "4/4"]
    assert [line.split()[2] for line in fits] == ["baseline", "baseline", "best", "best"]
    assert [line.split()[-2] for line in fits] == ["3", "2", "1", "0"]
