"""Cross-validation's fold runner: what it leaves on disk."""

import os
import subprocess
import tempfile
import time

import numpy as np

from legoexp.cv import FoldRunner


def _started(pid: int) -> str:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[19]


def test_a_fold_runner_removes_the_folds_directories_of_owners_that_are_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    child = subprocess.Popen(["true"])
    dead = f"legoexp-folds-{child.pid}-{_started(child.pid)}-a1b2"  # read before it is reaped
    child.wait()
    me, parent = os.getpid(), os.getppid()
    live = f"legoexp-folds-{me}-{_started(me)}-c3d4"
    names = {
        dead: "gone",
        f"legoexp-folds-{me}-{int(_started(me)) - 1}-e5f6": "gone",  # a pid reused: the owner is gone
        live: "kept",
        f"legoexp-folds-{parent}-{_started(parent)}-g7h8": "kept",
        "legoexp-folds-old2days": "gone",  # named before owners were recorded, two days old
        "legoexp-folds-oldtoday": "kept",
        "legoexp-other-1-2-x": "kept",
    }
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "split.npz").write_bytes(b"x" * 1000)
    two_days_ago = time.time() - 2 * 86400
    os.utime(tmp_path / "legoexp-folds-old2days", (two_days_ago, two_days_ago))

    kept = {name for name, fate in names.items() if fate == "kept"}
    runner = FoldRunner(np.zeros((10, 48, 48), np.uint8), np.arange(10), processes=2)
    try:
        (own,) = {p.name for p in tmp_path.iterdir()} - kept
        assert own.startswith(f"legoexp-folds-{me}-{_started(me)}-")
        assert (tmp_path / live / "split.npz").read_bytes() == b"x" * 1000
    finally:
        runner.close()
    assert {p.name for p in tmp_path.iterdir()} == kept
