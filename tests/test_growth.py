"""`legoexp.bench.growth`: a real study in a process of its own gives per-trial bookkeeping for two
windows of trials (its figures are for the benchmark's notes, not asserted: shared machines are noisy)."""

import math

import pytest
from conftest import run_module

from legoexp.bench import growth


@pytest.mark.slow
def test_a_short_study_gives_every_row_for_both_windows():
    rows = growth.growth(trials=12, windows=((0, 4), (8, 12)))
    kinds = ("bookkeeping", "sampler", "bookkeeping_cpu", "sampler_cpu", "trial")
    assert set(rows) == {f"{kind}_ms_trials_{a}_{b}" for kind in kinds for a, b in ((0, 4), (8, 12))} | {
        "bookkeeping_growth", "bookkeeping_growth_without_sampler", "bookkeeping_cpu_growth",
        "bookkeeping_cpu_growth_without_sampler"}
    assert all(math.isfinite(v) for v in rows.values())
    for a, b in ((0, 4), (8, 12)):
        # the bookkeeping is the step without its training waits, and holds the sampler's part
        assert 0 < rows[f"sampler_ms_trials_{a}_{b}"] < rows[f"bookkeeping_ms_trials_{a}_{b}"]
        assert rows[f"bookkeeping_ms_trials_{a}_{b}"] <= rows[f"trial_ms_trials_{a}_{b}"]
        assert 0 < rows[f"sampler_cpu_ms_trials_{a}_{b}"] < rows[f"bookkeeping_cpu_ms_trials_{a}_{b}"]
    assert rows["bookkeeping_growth"] == pytest.approx(rows["bookkeeping_ms_trials_8_12"] /
                                                       rows["bookkeeping_ms_trials_0_4"])


def test_rows_of_a_record_follow_the_definition():
    # [trial number, perf_counter, main thread CPU, training, sampler, sampler CPU] at each tell, in seconds
    steps = [[0, 10.0, 1.0, 0.0, 0.0, 0.0], [1, 10.5, 1.2, 0.2, 0.1, 0.05], [2, 11.0, 1.4, 0.4, 0.2, 0.1],
             [3, 12.0, 1.8, 0.6, 0.6, 0.3]]
    rows = growth.rows(steps, ((0, 2), (2, 4)))
    assert rows["trial_ms_trials_0_2"] == pytest.approx(500)  # trial 0 has no step: only trial 1's
    assert rows["bookkeeping_ms_trials_0_2"] == pytest.approx(300)
    assert rows["sampler_ms_trials_0_2"] == pytest.approx(100)
    assert rows["bookkeeping_cpu_ms_trials_0_2"] == pytest.approx(200)
    assert rows["sampler_cpu_ms_trials_0_2"] == pytest.approx(50)
    assert rows["trial_ms_trials_2_4"] == pytest.approx(750)
    assert rows["bookkeeping_ms_trials_2_4"] == pytest.approx(550)
    assert rows["sampler_ms_trials_2_4"] == pytest.approx(250)
    assert rows["bookkeeping_cpu_ms_trials_2_4"] == pytest.approx(300)
    assert rows["sampler_cpu_ms_trials_2_4"] == pytest.approx(125)
    assert rows["bookkeeping_growth"] == pytest.approx(550 / 300)
    assert rows["bookkeeping_growth_without_sampler"] == pytest.approx(300 / 200)
    assert rows["bookkeeping_cpu_growth"] == pytest.approx(300 / 200)
    assert rows["bookkeeping_cpu_growth_without_sampler"] == pytest.approx(175 / 150)


def test_windows_outside_the_study_are_refused():
    with pytest.raises(ValueError, match="windows"):
        growth.growth(trials=10, windows=((0, 4), (8, 12)))


def test_the_command_refuses_windows_outside_the_study_before_any_work():
    proc = run_module("legoexp.bench.growth", "--trials", "10", timeout=120)
    assert proc.returncode == 2
    assert "--windows 0:50 450:500: each A:B must lie within the 10 trials" in proc.stderr
