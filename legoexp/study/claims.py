"""Who runs which trial, and proving that they still do: owners, heartbeats, and trials left behind.

A process that claims a trial records itself as its ``owner`` (host, pid and the pid's start
time, so a reused pid is not mistaken for the owner) and, while it runs the trial, writes the
trial's ``heartbeat`` user attribute every ``interval`` seconds, on any Optuna storage (Optuna's
own heartbeat exists only for databases). Every other process watches: a RUNNING trial is failed,
and its MLflow run ended KILLED, when its owner is a process of this host that has ended, when
its heartbeat has not moved for 3 intervals of the watcher's own clock (whatever host it ran on,
whatever the clocks say), or, under the study's lock, when it has no owner at all (its claim broke
off between ``ask`` and recording the owner). Nothing is waited on for ever: a trial whose owner
cannot be proven alive is failed within 3 intervals of being seen.
"""

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from legoexp.ops.proc import start_ticks

OWNER = f"{socket.gethostname()}:{os.getpid()}:{start_ticks(os.getpid()) or ''}"


def owner_gone(owner: str) -> bool:
    """True when ``owner`` ("host:pid[:start]") is a process of this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host's: only its heartbeat can tell
    now = start_ticks(int(pid))
    if now is None:
        try:  # no /proc (not Linux): ask the kernel
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # exists, owned by another user
            pass
        return False
    return bool(start) and now != start  # the pid runs another process now


class Heartbeat:
    """``with Heartbeat(storage, trial_id, interval):`` keeps writing the trial's ``heartbeat``
    attribute (this host's time) from a thread. A beat that fails (the storage is away) is retried
    at the next interval; once the trial has ended, whoever ended it, the thread stops."""

    def __init__(self, storage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", round(time.time(), 3))
            except UpdateFinishedTrialError:
                return
            except Exception:  # the storage is away; the watchers decide what that means
                pass
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Watch:
    """Remembers, per RUNNING trial, its last heartbeat seen and since when (this process's clock)."""

    def __init__(self, interval: float):
        self.grace = 3 * interval
        self._seen: dict[int, tuple[object, float]] = {}

    def silent(self, trial: optuna.trial.FrozenTrial) -> bool:
        """True once the trial's heartbeat has not moved for the grace period."""
        beat, now = trial.user_attrs.get("heartbeat"), time.monotonic()
        seen = self._seen.get(trial.number)
        if seen is None or seen[0] != beat:
            self._seen[trial.number] = (beat, now)
            return False
        return now - seen[1] > self.grace


def fail_orphans(study: optuna.Study, watch: Watch, on_orphan: Callable[[optuna.trial.FrozenTrial, str], None],
                 claims_locked: bool = False) -> int:
    """Mark FAIL the RUNNING trials whose owner is gone (see the module's docstring), call
    ``on_orphan(trial, reason)`` for each, and return how many. ``claims_locked``: the caller holds
    the study's lock, under which trials are asked for and given their owner."""
    storage = study._storage
    study_id = storage.get_study_id_from_name(study.study_name)
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("owner")
        if owner is None:
            reason = "its claim broke off" if claims_locked else None
        elif owner_gone(str(owner)):
            reason = "its process died"
        elif watch.silent(trial):
            reason = f"its heartbeat stopped (silent for more than {watch.grace:g} s)"
        else:
            reason = None
        if reason is None:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        with contextlib.suppress(UpdateFinishedTrialError):  # someone else failed it first
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            on_orphan(trial, reason)
            count += 1
    return count
