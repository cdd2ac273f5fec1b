"""What the file system says of a path a write failed on: how much room is left on it, whether it is
read-only, and whether this user may write there (``ops.resources`` words it)."""

import os
from pathlib import Path

READ_ONLY, DENIED = "read-only", "denied"


def nearest_existing(path: Path) -> Path | None:
    """``path``, or its nearest ancestor that exists."""
    path = path.absolute()
    while not path.exists():
        if path.parent == path:
            return None
        path = path.parent
    return path


def mount_point(path: Path) -> Path:
    device = path.stat().st_dev
    while path.parent != path and path.parent.stat().st_dev == device:
        path = path.parent
    return path


def free_space(path: Path) -> str:
    """`` (N free on the file system at MOUNT)``, or '' when it cannot be told (not a local path)."""
    try:
        existing = nearest_existing(path)
        if existing is None:
            return ""
        st = os.statvfs(existing)
        return f" ({size(st.f_bavail * st.f_frsize)} free on the file system at {mount_point(existing)})"
    except OSError:
        return ""


def size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def refused(path: Path) -> tuple[str, str] | None:
    """(kind, reason) when a database file at ``path`` cannot be made: its folder is on a read-only file
    system or not writable; None if neither (then "unable to open database file" is something else)."""
    try:
        existing = nearest_existing(path)
        if existing is None or existing == path:
            return None
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            return READ_ONLY, "read-only file system"
        if not os.access(existing, os.W_OK):
            return DENIED, "permission denied"
    except OSError:
        pass
    return None


def why_read_only(path: Path) -> str:
    """Why SQLite found a database read-only: its file system, or the file's (or its folder's) rights."""
    try:
        existing = nearest_existing(path)
        if existing is None:
            return ""
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            return f" (read-only file system at {mount_point(existing)})"
        for p in (path, path.parent):
            if p.exists() and not os.access(p, os.W_OK):
                return f" (permission denied on {p})"
    except OSError:
        pass
    return ""
