"""Where a command's seconds go: laps from the process start, training counted apart, parts that add up."""

import json
import subprocess
import sys

import pytest

CODE = """
import json, time
from legoexp.ops import timings
time.sleep(0.05)
timings.lap("startup")
with timings.training():
    time.sleep(0.1)
time.sleep(0.05)
timings.lap("search")
time.sleep(0.02)
timings.lap("figures")
print(json.dumps({"metrics": timings.metrics(), "since_start": timings.since_start()}))
"""


def test_laps_split_the_wall_time_from_process_start_and_count_training_apart():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    m = result["metrics"]
    assert list(m) == ["time_startup_s", "time_search_training_s", "time_search_bookkeeping_s", "time_figures_s",
                       "time_rest_s", "time_total_s", "overhead_share"]
    assert m["time_startup_s"] >= 0.05  # the interpreter's start and imports are in it too
    assert m["time_search_training_s"] >= 0.1  # lower bounds only: a busy machine only adds
    assert m["time_search_bookkeeping_s"] >= 0.05
    assert m["time_figures_s"] >= 0.02
    parts = sum(v for k, v in m.items() if k not in ("time_total_s", "overhead_share"))
    assert m["time_total_s"] == pytest.approx(parts)
    assert m["time_total_s"] <= result["since_start"]
    assert m["overhead_share"] == pytest.approx(1 - m["time_search_training_s"] / m["time_total_s"])
