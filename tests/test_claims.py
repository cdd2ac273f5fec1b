"""Who runs a trial, and proving they still do: owners, heartbeats, and trials nobody can vouch for."""

import os
import socket
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from test_sweep import TINY, _runs, _store_dir, _study, _sweep

from legoexp.study.claims import OWNER, Heartbeat, Watch, fail_orphans, owner_gone


def test_an_owner_is_gone_when_its_pid_ended_or_now_runs_another_process():
    host, pid, start = OWNER.split(":")
    assert pid == str(os.getpid()) and start
    assert not owner_gone(OWNER)
    assert owner_gone(f"{host}:{pid}:{int(start) + 1}")  # the same pid, started at another time: reused
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert owner_gone(f"{host}:{child.pid}:1")
    assert not owner_gone(f"another-{host}:{child.pid}:1")  # another host's: only its heartbeat can tell


def test_a_trial_is_silent_once_its_heartbeat_has_not_moved_for_three_intervals(tmp_path):
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "j")))
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    watch = Watch(interval=1)
    with Heartbeat(storage, trial._trial_id, 0.05):
        for _ in range(40):  # it beats: never silent
            assert not watch.silent(study.trials[0])
            time.sleep(0.1)
    assert not watch.silent(study.trials[0])  # first seen still
    time.sleep(3.5)
    assert watch.silent(study.trials[0])
    study.tell(trial, 1.0)
    with Heartbeat(storage, trial._trial_id, 0.05) as beat:  # a finished trial stops the beat by itself
        beat._thread.join(timeout=10)
        assert not beat._thread.is_alive()


def _add_running_trial(journal, name, owner):
    study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal))))
    trial = study.ask({"hidden1": optuna.distributions.IntDistribution(16, 256, log=True)})
    trial.set_user_attr("owner", owner)
    return trial.number


@pytest.mark.slow
def test_running_trials_nobody_can_vouch_for_are_failed_not_waited_on(mlflow_env, tracking_uri):
    proc, name = _sweep(mlflow_env, "--trials", "2", *TINY)
    assert proc.returncode == 0, proc.stderr
    journal = _store_dir(tracking_uri) / "optuna.journal"
    strays = {_add_running_trial(journal, name, f"{socket.gethostname()}:{os.getpid()}:1"): "its process died",
              _add_running_trial(journal, name, f"host-{uuid.uuid4().hex[:6]}:4242:99"): "its heartbeat stopped"}
    # a pid reused since by this very process, and a host that went away: 2 finished + 2 running make
    # the 4 trials asked for, so the sweep can only end if it fails both
    proc, _ = _sweep(mlflow_env, "--trials", "4", *TINY, "--heartbeat", "1", study=name, timeout=300)
    assert proc.returncode == 0, proc.stderr
    trials = _study(journal.parent, name).get_trials()
    for number, reason in strays.items():
        assert trials[number].state == TrialState.FAIL
        assert trials[number].user_attrs["fail_reason"].startswith(reason)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 4
    assert not any(r.info.status == "RUNNING" for r in _runs(name))


def test_fail_orphans_fails_a_silent_trial_once_even_if_two_watchers_see_it(tmp_path):
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "j")))
    study = optuna.create_study(study_name="s", storage=storage)
    study.ask().set_user_attr("owner", "elsewhere:1:1")
    watchers, seen = [Watch(interval=0.05), Watch(interval=0.05)], []
    for w in watchers:
        assert fail_orphans(study, w, lambda t, why: seen.append(why)) == 0  # first look starts the clock
    time.sleep(0.3)
    assert sum(fail_orphans(study, w, lambda t, why: seen.append(why)) for w in watchers) == 1
    assert study.trials[0].state == TrialState.FAIL and len(seen) == 1
