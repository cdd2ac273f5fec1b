"""A write that ran out of room or was refused, found behind whatever error it caused, in one line.

When a disk fills, or a file system or folder is read-only, the error a command finally sees is
rarely the one that says so: MLflow wraps SQLAlchemy's error, which wraps SQLite's ("database or
disk is full"); a failed model upload is followed by MLflow failing to mark the model FAILED in a
store that is full too. ``find`` walks an error's chain (``__cause__``, ``__context__``, even when
suppressed, and SQLAlchemy's ``.orig``) to the first write that failed for one of these reasons:

- no space left on the device (``ENOSPC``), a disk quota (``EDQUOT``), SQLite's "database or disk
  is full";
- a read-only file system (``EROFS``), SQLite's "attempt to write a readonly database";
- permission denied (``EACCES``, ``EPERM``);

and ``Shortage.error()`` says in one line what was being written (the tracking store, a run's or
a logged model's artifacts, the Optuna storage or its journal, a file), where (URI or path), what
ran out or was refused, and that rerunning the same command resumes once that is fixed.

MLflow logs some of these errors with their whole traceback before raising them; ``ops.logs``
drops those records while a command that reports them itself runs.
"""

import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from legoexp.errors import UserError
from legoexp.ops import filesystem
from legoexp.ops.filesystem import DENIED, READ_ONLY

ROOM = "room"

_ERRNOS = {
    errno.ENOSPC: (ROOM, "no space left on the device"),
    errno.EDQUOT: (ROOM, "the disk quota is exceeded"),
    errno.EROFS: (READ_ONLY, "read-only file system"),
    errno.EACCES: (DENIED, "permission denied"),
    errno.EPERM: (DENIED, "permission denied (operation not permitted)"),
}
_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_CANTOPEN = 13, 8, 14  # result codes (sqlite3.Error.sqlite_errorcode & 0xff)
# The same, as text: for errors that arrive as a message only (a tracking server's answer, a
# PostgreSQL "could not extend file ...: No space left on device"). Permission denied only with its
# errno: a tracking server says "Permission denied" for a right the user lacks, which is not this.
_TEXTS = [
    (re.compile(r"database or disk is full", re.I), ROOM, "the database or disk is full"),
    (re.compile(r"no space left on device", re.I), ROOM, "no space left on the device"),
    (re.compile(r"disk quota exceeded", re.I), ROOM, "the disk quota is exceeded"),
    (re.compile(r"attempt to write a readonly database", re.I), READ_ONLY, "the database is read-only"),
    (re.compile(r"read-only file system", re.I), READ_ONLY, "read-only file system"),
    (re.compile(r"\[Errno 13\] Permission denied", re.I), DENIED, "permission denied"),
]
_ERRNO_PATH = re.compile(r"\[Errno \d+\] [^:\n]+: '([^'\n]+)'(?: -> '([^'\n]+)')?")
FIXES = {ROOM: "make room there", READ_ONLY: "make it writable", DENIED: "give this user write access to it"}


class ResourceError(UserError):
    """A write refused for want of room or rights; the message names what, where and why."""


@dataclass(frozen=True)
class Places:
    """What a command writes to, to name what an error was writing: the tracking store's URI, the
    registry's, and the Optuna storage as ``storage.storage_label`` gives it (``journal:PATH`` or a URL)."""
    tracking_uri: str | None = None
    registry_uri: str | None = None
    optuna_storage: str | None = None

    @property
    def journal(self) -> Path | None:
        if self.optuna_storage and self.optuna_storage.startswith("journal:"):
            return Path(self.optuna_storage[len("journal:"):])
        return None


@dataclass(frozen=True)
class Shortage:
    """A write that failed: ``what`` was being written (with its URI or path), ``kind`` (ROOM,
    READ_ONLY, DENIED), ``reason`` as the system or SQLite said it, ``path`` on this machine if known."""
    what: str
    kind: str
    reason: str
    path: Path | None = field(default=None, compare=False)

    def line(self) -> str:
        detail = ""
        if self.kind == ROOM and self.path is not None:
            detail = filesystem.free_space(self.path)
        elif self.kind == READ_ONLY and self.reason == "the database is read-only" and self.path is not None:
            detail = filesystem.why_read_only(self.path)
        return (f"writing {self.what} failed: {self.reason}{detail}; {FIXES[self.kind]}, then rerun the same "
                "command to resume")

    def error(self) -> ResourceError:
        return ResourceError(self.line())


def find(error: BaseException, places: Places = Places()) -> Shortage | None:
    """The first write in ``error``'s chain that ran out of room or was refused (the deepest: what
    went wrong first, the rest followed from it), or None."""
    found = None
    for node, outer in _chain(error):
        shortage = _classify(node, outer, places)
        if shortage is not None:
            found = shortage
    return found


def _chain(error: BaseException):
    """Each error of the chain from ``error`` to its first cause, with the errors wrapped around it
    (nearest first)."""
    seen, node, outer = set(), error, []
    while node is not None and id(node) not in seen and len(seen) < 100:
        seen.add(id(node))
        yield node, outer
        outer = [node, *outer]
        node = node.__cause__ or node.__context__ or getattr(node, "orig", None)


def _classify(node: BaseException, outer: list[BaseException], places: Places) -> Shortage | None:
    if isinstance(node, OSError) and node.errno in _ERRNOS:
        kind, reason = _ERRNOS[node.errno]
        path = node.filename2 or node.filename  # a copy's or a link's target, else the file
        if kind == DENIED and not path:
            return None  # not a file's (signalling another user's process, say)
        return _written_file(Path(os.fsdecode(path)) if path else None, kind, reason, [node, *outer], places)
    code = getattr(node, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_SQLITE_FULL, _SQLITE_READONLY):
        kind, reason = ((ROOM, "the database or disk is full") if code & 0xFF == _SQLITE_FULL
                        else (READ_ONLY, "the database is read-only"))
        return _database(kind, reason, [node, *outer], places)
    if code is not None and code & 0xFF == _SQLITE_CANTOPEN:  # a database it may not create (or open)
        shortage = _database(READ_ONLY, "", [node, *outer], places)
        refused = filesystem.refused(shortage.path) if shortage.path is not None else None
        return Shortage(shortage.what, *refused, shortage.path) if refused else None
    if isinstance(node, (OSError, UserError)) or code is not None or getattr(node, "orig", None) is not None:
        return None  # another errno or SQLite error; legoexp's own words; SQLAlchemy's wrapper (.orig is next)
    text = str(node)
    for pattern, kind, reason in _TEXTS:
        if pattern.search(text):
            named = _ERRNO_PATH.search(text)
            if named:  # an OSError's text: "[Errno 28] No space left on device: 'PATH'"
                return _written_file(Path(named.group(2) or named.group(1)), kind, reason, [node, *outer], places)
            return _database(kind, reason, [node, *outer], places)
    return None


def _modules(errors: list[BaseException]) -> list[str]:
    """The modules whose code each error passed through, innermost first, errors in the order given."""
    names = []
    for e in errors:
        tb, frames = e.__traceback__, []
        while tb is not None:
            frames.append(tb.tb_frame.f_globals.get("__name__", ""))
            tb = tb.tb_next
        names += reversed(frames)
    return names


def _owner(errors: list[BaseException]) -> str | None:
    """Which store was being written when ``errors[0]`` happened (``errors[1:]`` wrap it): "registry",
    "artifacts", "tracking" (MLflow's), "journal" or "optuna"; told by the innermost code of MLflow or
    Optuna that the errors passed through."""
    for name in _modules(errors):
        if name.startswith(("mlflow.store.db", "mlflow.utils")):
            continue  # shared by the stores: the store's own code, further out, tells
        if name.startswith(("mlflow.store.model_registry", "mlflow.tracking._model_registry")):
            return "registry"
        if name.startswith("mlflow.store.artifact"):
            return "artifacts"
        if name.startswith("optuna.storages.journal"):
            return "journal"
        if name.startswith("optuna."):
            return "optuna"
        if name.startswith("mlflow."):
            return "tracking"
    return None


def _database(kind: str, reason: str, errors: list[BaseException], places: Places) -> Shortage:
    owner = _owner(errors)
    if owner == "optuna" and places.optuna_storage:
        return Shortage(f"the Optuna storage {places.optuna_storage}", kind, reason, _sqlite_file(places.optuna_storage))
    if owner == "registry" and places.registry_uri and places.registry_uri != places.tracking_uri:
        return Shortage(f"the model registry {places.registry_uri}", kind, reason, _sqlite_file(places.registry_uri))
    if places.tracking_uri and owner != "optuna":
        return Shortage(f"the tracking store {places.tracking_uri}", kind, reason, _sqlite_file(places.tracking_uri))
    return Shortage("a database" if owner is None else "the Optuna storage", kind, reason)


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


_LOGGED_MODEL = re.compile(r"^(.*/models/(m-[0-9a-f]+)/artifacts)(/|$)")
_RUN_ARTIFACTS = re.compile(r"^(.*/([0-9a-f]{32})/artifacts)(/|$)")


def _written_file(path: Path | None, kind: str, reason: str, errors: list[BaseException], places: Places) -> Shortage:
    """Name what a file of ``path`` belongs to: MLflow's artifacts (a logged model's, a run's), the
    Optuna journal (or its lock files), the tracking store's database, or just the file. Without a
    path (a write, flush or fsync of an open file), the code that was writing tells."""
    if path is None:
        path = _path_written(errors)
    journal = places.journal
    if path is not None:
        text = path.as_posix()
        if journal is not None and text in {str(journal), f"{journal}.lock", f"{journal}.claim.lock"}:
            return Shortage(f"the Optuna storage journal {journal}", kind, reason, journal)
        store = _sqlite_file(places.tracking_uri or "")
        if store is not None and text.startswith(str(store)):  # mlflow.db, mlflow.db-journal, its claim lock
            return Shortage(f"the tracking store {places.tracking_uri}", kind, reason, store)
        model = _LOGGED_MODEL.match(text)
        if model:
            return Shortage(f"the artifacts of logged model {model.group(2)} at {model.group(1)}", kind, reason,
                            Path(model.group(1)))
        run = _RUN_ARTIFACTS.match(text)
        if run:
            return Shortage(f"the artifacts of run {run.group(2)} at {run.group(1)}", kind, reason, Path(run.group(1)))
        owner = _owner(errors)
        if owner == "journal":
            return Shortage(f"the Optuna storage journal {path}", kind, reason, path)
        return Shortage(f"the artifacts folder {path}" if owner == "artifacts" else str(path), kind, reason, path)
    owner = _owner(errors)
    if owner in ("tracking", "registry") and places.tracking_uri:
        return Shortage(f"the tracking store {places.tracking_uri}", kind, reason, _sqlite_file(places.tracking_uri))
    return Shortage({"artifacts": "the artifacts of a run", "journal": "the Optuna storage journal"}.get(owner, "a file"),
                    kind, reason)


# Where the code that was writing keeps the file it wrote: MLflow's local artifact repository, Optuna's journal.
_WRITERS = {"mlflow.store.artifact": ("destination_file_path", "artifact_dir"), "optuna.storages.journal": ("_file_path",)}


def _path_written(errors: list[BaseException]) -> Path | None:
    """The file that the innermost frame of an artifact repository or of Optuna's journal was writing."""
    for e in errors:
        frames, tb = [], e.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for frame in reversed(frames):
            module = frame.f_globals.get("__name__", "")
            names = next((v for k, v in _WRITERS.items() if module.startswith(k)), ())
            for name in names:
                value = frame.f_locals.get(name, getattr(frame.f_locals.get("self"), name, None))
                if isinstance(value, str) and value:
                    return Path(value)
    return None
