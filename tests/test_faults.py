"""Fault points: a test holds or kills a process at a named step instead of racing it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from legoexp.ops import faults

SCRIPT = "from legoexp.ops import faults\nfor _ in range(3):\n    faults.point('trial.fold')\n    print('passed', flush=True)\n"


def _run(spec):
    return subprocess.Popen([sys.executable, "-c", SCRIPT], env={**os.environ, "LEGOEXP_FAULTS": spec},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_at_the_nth_pass_kills_exactly_there():
    proc = _run("trial.fold#2=kill")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert out.split() == ["passed"]
    assert "fault point trial.fold#2: kill" in err


def test_stop_holds_the_process_at_the_point_until_continued():
    proc = _run("trial.fold=stop")
    deadline = time.monotonic() + 60
    while open(f"/proc/{proc.pid}/stat").read().rpartition(")")[2].split()[0] != "T":
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.split() == ["passed"] * 3


@pytest.mark.parametrize("spec", ["nowhere=kill", "trial.fold=explode", "trial.fold#x=kill"])
def test_a_bad_plan_is_refused_naming_it(spec, monkeypatch):
    monkeypatch.setattr(faults, "_plan", None)
    monkeypatch.setenv("LEGOEXP_FAULTS", spec)
    with pytest.raises(ValueError, match="is not NAME"):
        faults.point("trial.fold")
