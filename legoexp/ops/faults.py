"""Fault points: named steps where a test can hold or kill this process, so it never races it.

A test sets ``LEGOEXP_FAULTS`` to ``NAME[#N]=ACTION`` (several separated by ``;``) in the
environment of the command it runs. The N-th time (default the first) a process passes
``point(NAME)`` it does ACTION:

- ``kill``: SIGKILL itself, as the kernel's out-of-memory killer or ``kill -9`` would;
- ``killgroup``: SIGKILL its whole process group (a pod, or a host, going away: the sweep with its
  ``--jobs`` workers and fold processes), so start the command in a session of its own;
- ``stop``: SIGSTOP itself; the test sees it stopped (``/proc/PID/stat`` state ``T``) at that
  exact step and does what it likes with it (kill it, cut its network, let it go on with SIGCONT).

Before acting it prints ``fault point NAME#N: ACTION`` on stderr. With ``LEGOEXP_FAULTS_ONCE``
set to a path, only the first process of all those that inherited the variables acts (``--jobs``
workers, fold processes): it creates that file, holding its pid; the others go on (that process
may act again, at the next point of the plan). Without the
variables ``point`` does nothing but one dictionary lookup. The names in use are listed in ``POINTS``.
"""

import os
import signal
import sys

POINTS = {
    "trial.claimed": "a trial was asked for and given its owner, before its MLflow run exists",
    "trial.run_made": "a trial's MLflow run exists, its id not yet held by the process that made it",
    "trial.fold": "a fold's accuracy was reported to Optuna (and the pruner asked)",
    "trial.told": "the trial's outcome is in the study, its MLflow run not yet ended",
    "fold.train": "a fold-training process is about to train a fold",
    "search.done": "the study has its trials; nothing after the search has run",
    "report.figures": "the study's figures are being logged on the parent run",
    "rescore.logging": "the candidates are re-scored and the study's rescoring run made, not yet filled",
    "report.compared": "the comparison's models are trained, its MLflow run not yet created",
    "report.model_logged": "one model of the comparison is logged",
    "report.registered": "a model version is registered, its alias not yet set",
    "registry.step": "promotion moved one tag or alias of the registry",
    "trial.abandon": "a started trial is being ended because its process stops (a signal, an error)",
    "baseline.model": "the baseline's run holds its metrics, its model is not logged yet",
}

_plan: dict[str, tuple[int, str]] | None = None
_seen: dict[str, int] = {}


def _parse(text: str) -> dict[str, tuple[int, str]]:
    plan = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        where, _, action = item.partition("=")
        name, _, count = where.partition("#")
        if name not in POINTS or action not in ("kill", "killgroup", "stop") or (count and not count.isdigit()):
            raise ValueError(f"LEGOEXP_FAULTS={text!r}: {item!r} is not NAME[#N]=kill|killgroup|stop with "
                             f"NAME one of {sorted(POINTS)}")
        plan[name] = (int(count or 1), action)
    return plan


def _first_to_act() -> bool:
    once = os.environ.get("LEGOEXP_FAULTS_ONCE")
    if not once:
        return True
    try:
        fd = os.open(once, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # the first process to act may act again, at another point
        with open(once) as f:
            return f.read() == str(os.getpid())
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def point(name: str) -> None:
    """Pass the fault point ``name``: nothing happens unless ``LEGOEXP_FAULTS`` asks for it."""
    global _plan
    if _plan is None:
        _plan = _parse(os.environ.get("LEGOEXP_FAULTS", ""))
    if name not in _plan:
        return
    _seen[name] = _seen.get(name, 0) + 1
    count, action = _plan[name]
    if _seen[name] != count or not _first_to_act():
        return
    print(f"fault point {name}#{count}: {action}", file=sys.stderr, flush=True)
    if action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action == "killgroup":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    else:
        os.kill(os.getpid(), signal.SIGKILL)
