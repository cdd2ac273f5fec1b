"""Where a study lives: opening its Optuna storage, repairing a torn journal, and the study's lock.

``--storage`` is an Optuna URL (``sqlite:///...``, ``postgresql+psycopg2://...``), or Optuna's
journal file: ``journal:PATH``, a ``PATH`` ending in ``.journal``, or '' for the default beside the
MLflow store. Every process
of a study (main sweeps, ``--worker`` s, ``--jobs`` workers, on any host) serialises through one
``StudyLock``: a ``flock`` on a file beside a file storage, a PostgreSQL advisory lock on a
database. Under it a process creates the storage's schema, the study, the MLflow experiment and
the parent run if they are missing (so processes started at the same instant on a fresh database
do not collide), claims a trial, or compares and registers the study's best (once).
"""

import contextlib
import fcntl
import os
import sys
from pathlib import Path

import optuna

from legoexp.errors import ConfigError, UserError, first_line

_ADVISORY_LOCK_KEY = 0x1E90E  # any constant: the advisory lock all legoexp processes agree on
HEARTBEAT = 10  # seconds, sweep's default --heartbeat: the time scale of the connection settings below


def _journal_path(url: str, default_dir: Path) -> Path | None:
    """The journal file of ``url`` ('', ``journal:PATH`` or a ``PATH.journal``), or None for a database URL."""
    if url.endswith(".journal") and "://" not in url and not url.startswith("journal:"):
        url = f"journal:{url}"
    if url and not url.startswith("journal:"):
        return None
    path = Path(url.partition(":")[2] or default_dir / "optuna.journal")
    if not path.parent.is_dir():
        raise ConfigError(f"storage={url!r}: directory {path.parent} does not exist")
    return path


def connect_args(url: str, heartbeat: int = HEARTBEAT) -> dict:
    """libpq settings for a PostgreSQL ``url`` (``{}`` for other databases) so that neither end of a
    connection waits for ever on a peer gone silent (a host cut off the network, a database host
    gone), in units of the sweep's ``heartbeat``. A setting the URL gives (``?connect_timeout=5``) wins.

    The server ends this process's sessions once it has heard nothing for a trial's grace (3
    heartbeats: keepalive probes after 1 and 2 heartbeats of silence, both still unanswered 1
    heartbeat later, or a reply unacknowledged that long). That frees the study's lock, and the row locks
    of a transaction cut in the middle, about when the others fail the silent host's trial; by
    default the server would wait 2 h for its first probe, and every worker with it. This process
    gives up later, after 4 graces (2 min at the default heartbeat, as long as MLflow waits for one
    request): a request or probe unacknowledged that long, or a connection not made within a grace,
    is an error, where TCP would retransmit for 15 min and a connection attempt take 2 min. A host
    whose link returns in between finds its sessions ended and reconnects (``pool_pre_ping``)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or parsed.get_driver_name() not in ("psycopg2", "psycopg"):
        return {}
    grace, patience = 3 * heartbeat, 12 * heartbeat
    server = {"tcp_keepalives_idle": heartbeat, "tcp_keepalives_interval": heartbeat, "tcp_keepalives_count": 2,
              "tcp_user_timeout": grace * 1000}  # per session, from PostgreSQL 12 on
    client = {"connect_timeout": grace, "keepalives": 1, "keepalives_idle": heartbeat,
              "keepalives_interval": heartbeat, "keepalives_count": patience // heartbeat - 1,
              "tcp_user_timeout": patience * 1000, "options": " ".join(f"-c {k}={v}" for k, v in server.items())}
    return {k: v for k, v in client.items() if k not in parsed.query}


class LockLost(UserError):
    """The study's lock was taken from a holder that fell silent; what it did under it may have raced."""


class StudyLock:
    """``with lock():`` holds the study-wide lock of ``url``. Blocks until it is free; a holder that
    dies releases it (the kernel drops its ``flock``; PostgreSQL ends its session)."""

    def __init__(self, url: str, default_dir: Path, heartbeat: int = HEARTBEAT):
        journal = _journal_path(url, default_dir)
        self.path = (f"{journal}.claim.lock" if journal else
                     f"{url[len('sqlite:///'):]}.claim.lock" if url.startswith("sqlite:///") else None)
        if self.path and not Path(self.path).parent.is_dir():
            raise ConfigError(f"storage={url!r}: directory {Path(self.path).parent} does not exist")
        self.engine = None
        if self.path is None and url.startswith("postgresql"):
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool

            try:
                self.engine = create_engine(url, poolclass=NullPool, connect_args=connect_args(url, heartbeat))
            except Exception as e:
                raise ConfigError(f"storage={url!r}: cannot open it as an Optuna storage ({first_line(e)})"
                                  f"{_hint(url)}") from None
        self.url = url

    @contextlib.contextmanager
    def __call__(self, first: bool = False):
        """Hold the lock; with ``first`` (a process's first contact with the storage), a database that
        cannot be reached is a one-line ``ConfigError`` naming it."""
        if self.path:
            with open(self.path, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                yield  # closing the file releases the lock
            return
        if self.engine is None:
            yield
            return
        from sqlalchemy import text

        try:  # autocommit: the session waits for and holds the lock with no transaction open
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        except Exception as e:
            if first:
                raise ConfigError(f"storage={self.url!r}: cannot open it as an Optuna storage "
                                  f"({first_line(e)})") from None
            raise
        held = False
        try:
            yield
            held = True
        finally:
            with contextlib.suppress(Exception):  # a session that broke off has released it already
                held &= conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK_KEY}).scalar()
            with contextlib.suppress(Exception):
                conn.close()
        if not held:  # the server ended the session (this host was silent too long): others may have held it
            raise LockLost(f"storage={self.url!r}: this process lost the study's lock while it held it (its session "
                           "to the database broke off); rerun the same command to resume")


def open_storage(url: str, default_dir: Path, heartbeat: int = HEARTBEAT):
    """An Optuna storage for ``url`` ('' = journal file in ``default_dir``); ConfigError if it can't
    open. Call it holding the study's lock: it may create the schema, or repair a torn journal.
    A database connection gives up on a silent peer as ``connect_args`` says."""
    try:
        journal = _journal_path(url, default_dir)
        if journal:
            from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

            lock = JournalFileSymlinkLock(str(journal))
            backend = JournalFileBackend(str(journal), lock_obj=lock)
            with contextlib.ExitStack() as held:
                held.callback(lock.release)
                lock.acquire()
                dropped = repair_journal(journal)
            if dropped:
                print(f"{journal}: dropped its last record, {dropped} bytes cut short by an interrupted write "
                      "(never acknowledged, so nothing that was done is lost)", file=sys.stderr)
            storage = optuna.storages.JournalStorage(backend)
            return storage
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True,  # survives a DB restart
                                                              "connect_args": connect_args(url, heartbeat)})
    except ConfigError:
        raise
    except ValueError as e:  # Optuna's replay of a journal damaged in its middle
        raise ConfigError(f"storage={url!r}: the journal is damaged ({first_line(e)}); it cannot be resumed, "
                          "start a new one (another --storage or --study-name)") from None
    except Exception as e:
        raise ConfigError(f"storage={url!r}: cannot open it as an Optuna storage ({first_line(e)}){_hint(url)}") from None


def _hint(url: str) -> str:
    """What the user probably meant, for the URLs people write that SQLAlchemy does not take."""
    scheme = url.partition("://")[0]
    if scheme in ("postgres", "postgresql"):
        return "; write postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DB"
    if "://" not in url:
        return "; expected a URL (sqlite:///optuna.db, postgresql+psycopg2://...), journal:PATH or a PATH ending in .journal"
    return ""


def repair_journal(path: Path) -> int:
    """Cut a journal back to its last complete record (line) and return the bytes dropped. A torn
    last line is a write that never finished, hence never acknowledged; left there, the next
    record would be appended to it and make the whole journal unreadable. Hold Optuna's lock."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        keep, block = size, 1 << 16
        while keep > 0:
            start = max(0, keep - block)
            f.seek(start)
            chunk = f.read(keep - start)
            if keep == size and chunk.endswith(b"\n"):
                return 0
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
        f.truncate(keep)
        os.fsync(f.fileno())
    return size - keep


def storage_label(url: str, default_dir: Path) -> str:
    """The storage as logged: never with a password in it."""
    journal = _journal_path(url, default_dir)
    if journal:
        return f"journal:{journal}"
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
