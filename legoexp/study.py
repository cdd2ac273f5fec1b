"""The Optuna side of the sweep: search space, storage, sampler, pruner, and trials left behind.

The search space is read from ``conf/search_space.yaml`` and must contain the lab's baseline,
which every study runs first. Storage is an Optuna URL (``sqlite:///...``,
``postgresql+psycopg2://...``) or ``journal:PATH`` for Optuna's journal file, the default beside
the MLflow store. Sampling is seeded TPE (multivariate, constant liar for parallel workers);
pruning is Optuna's ``WilcoxonPruner``, made for objectives that average over folds. A trial
left RUNNING by a process that died on this machine is found by the owner it recorded and
marked FAIL, with its MLflow run KILLED, so a rerun only runs what is missing.
"""

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from legoexp.config import CONF_DIR, read_yaml
from legoexp.errors import ConfigError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SPACE_KEYS = {"hidden1", "hidden2", "lr", "batch_size"}
_CLAIM_LOCK_KEY = 0x1E90E  # any constant: the advisory lock all legoexp workers agree on
OWNER = f"{socket.gethostname()}:{os.getpid()}"


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


@contextlib.contextmanager
def claim_lock(storage):
    """Serialise trial claims of all workers sharing ``storage``: a file lock beside a file
    storage, an advisory lock in PostgreSQL."""
    path = getattr(storage, "claim_lock_path", None)
    if path:
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    elif isinstance(storage, optuna.storages.RDBStorage) and storage.engine.dialect.name == "postgresql":
        from sqlalchemy import text

        with storage.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _CLAIM_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _CLAIM_LOCK_KEY})
    else:
        yield


def heartbeat(storage, trial):
    """Optuna's own heartbeat for a trial run outside ``optimize`` (a no-op without heartbeats)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial._trial_id, storage)


def open_storage(url: str, default_dir: Path, heartbeat: int = 10):
    """An Optuna storage for ``url`` ('' = journal file in ``default_dir``); ConfigError if it can't open.
    A running trial signs of life every ``heartbeat`` seconds; silent for 3 of them, it counts as dead."""
    try:
        if not url or url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url.partition(":")[2] or default_dir / "optuna.journal")
            if not path.parent.is_dir():
                raise ConfigError(f"storage={url!r}: directory {path.parent} does not exist")
            storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
            storage.claim_lock_path = f"{path}.claim.lock"
            return storage
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                                             engine_kwargs={"pool_pre_ping": True})  # survives a DB restart
        if url.startswith("sqlite:///"):
            storage.claim_lock_path = f"{url[len('sqlite:///'):]}.claim.lock"
        return storage
    except ConfigError:
        raise
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"storage={url!r}: cannot open it as an Optuna storage ({first_line})") from None


def storage_label(url: str, default_dir: Path) -> str:
    """The storage as logged: never with a password in it."""
    if not url:
        return f"journal:{default_dir / 'optuna.journal'}"
    if url.startswith("journal:"):
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def create_study(name: str, storage, seed: int, baseline: dict) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    pruner = optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    alive = FINISHED + (TrialState.RUNNING, TrialState.WAITING)
    if not any(t.params == baseline or t.system_attrs.get("fixed_params") == baseline
               for t in study.get_trials(deepcopy=False, states=alive)):
        study.enqueue_trial(baseline, user_attrs={"baseline": True})
    return study


def fail_orphans(study: optuna.Study, storage,
                 on_orphan: Callable[[optuna.trial.FrozenTrial], None], claims_locked: bool = False) -> int:
    """Mark FAIL the RUNNING trials whose owner is gone: its process on this host has ended, or
    (on a database storage) its heartbeat stopped, wherever it ran. With ``claims_locked`` (the
    caller holds ``claim_lock``, under which a trial is asked for and given its owner), a RUNNING
    trial with no owner is one whose claim broke off between the two, e.g. when the storage went
    away, and it is failed too: nobody will ever run it."""
    host = socket.gethostname()
    study_id = storage.get_study_id_from_name(study.study_name)
    count = 0
    if is_heartbeat_enabled(storage):  # Optuna fails trials whose heartbeat stopped, wherever they ran
        running = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if trial.number in running:
                on_orphan(running[trial.number])
                count += 1
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, _, pid = str(trial.user_attrs.get("owner", "")).partition(":")
        unclaimed = claims_locked and "owner" not in trial.user_attrs
        if not unclaimed and (owner_host != host or not pid.isdigit() or _alive(int(pid))):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "fail_reason", "its claim broke off" if unclaimed else "its process died")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        on_orphan(trial)
        count += 1
    return count


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return True


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))
