import itertools
import math

import numpy as np
import pytest
from scipy import stats as st

from legoexp.comparison import stats

BASELINE = [0.8845, 0.8293, 0.8650, 0.8532, 0.8546]
BEST = [0.8978, 0.8281, 0.8781, 0.8613, 0.8962]


def test_mean_ci_matches_a_hand_computed_student_t_interval_and_contains_the_mean():
    values = [0.80, 0.82, 0.84, 0.86]
    # mean 0.83, sample sd sqrt(0.0020/3), t(0.975, 3) = 3.182446305...
    half = 3.182446305284263 * math.sqrt(0.0020 / 3) / 2
    mean, low, high = stats.mean_ci(values)
    assert mean == pytest.approx(0.83)
    assert (low, high) == pytest.approx((0.83 - half, 0.83 + half))
    assert low < mean < high


def test_mean_ci_narrows_with_lower_confidence():
    _, low95, high95 = stats.mean_ci(BEST)
    _, low80, high80 = stats.mean_ci(BEST, confidence=0.80)
    assert low95 < low80 < high80 < high95


@pytest.mark.parametrize("values", [[0.9], [0.7, 0.7, 0.7]], ids=["one_value", "zero_spread"])
def test_mean_ci_of_one_value_or_zero_spread_is_the_mean_itself(values):
    mean, low, high = stats.mean_ci(values)
    assert low == mean == high == pytest.approx(values[0])


def test_mean_ci_rejects_empty_and_nan_input():
    for bad in ([], [0.8, math.nan]):
        with pytest.raises(ValueError):
            stats.mean_ci(bad)


def test_paired_comparison_matches_scipy_ttest_rel_and_per_configuration_cis():
    result = stats.paired_comparison(BASELINE, BEST)
    expected = st.ttest_rel(BEST, BASELINE)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.statistic == pytest.approx(expected.statistic) and result.statistic > 0
    assert result.test == "paired t-test" and result.n == 5
    assert result.mean_diff == pytest.approx(np.mean(BEST) - np.mean(BASELINE))
    assert (result.mean_a, *result.ci_a) == pytest.approx(stats.mean_ci(BASELINE))
    assert (result.mean_b, *result.ci_b) == pytest.approx(stats.mean_ci(BEST))
    assert result.ci_diff == pytest.approx(stats.mean_ci(np.subtract(BEST, BASELINE))[1:])


def test_paired_comparison_is_a_frozen_dataclass():
    result = stats.paired_comparison(BASELINE, BEST)
    with pytest.raises(AttributeError):
        result.p_value = 0.0


def test_verdict_says_no_significant_difference_when_the_ci_contains_zero():
    result = stats.paired_comparison(BASELINE, BEST)
    assert result.ci_diff[0] < 0 < result.ci_diff[1]
    line = result.verdict()
    assert "better" not in line and line.endswith(": no significant difference")
    assert line.startswith("best - baseline = +0.0150 test accuracy (95% CI -0.0049..+0.0348)")
    assert "paired t-test p=0.104 over 5 seeds" in line


@pytest.mark.parametrize("shift, winner", [(0.02, "best"), (-0.02, "baseline")])
def test_verdict_names_the_better_configuration_only_when_the_ci_excludes_zero(shift, winner):
    rng = np.random.default_rng(0)
    b = np.add(BASELINE, shift + rng.normal(0, 0.002, 5))
    result = stats.paired_comparison(BASELINE, b)
    assert not result.ci_diff[0] <= 0 <= result.ci_diff[1]
    assert result.p_value < 0.05
    assert result.verdict().endswith(f": {winner} is better")


def test_as_table_has_a_row_per_configuration_the_difference_and_the_test():
    rows = stats.paired_comparison(BASELINE, BEST).as_table("base", "tuned").splitlines()
    assert len(rows) == 5
    assert rows[1].split()[:2] == ["base", "0.8573"] and rows[2].split()[:2] == ["tuned", "0.8723"]
    assert rows[3].startswith("tuned - base") and "+0.0150" in rows[3]
    assert rows[4].startswith("paired t-test over 5 seeds") and "p=0.104" in rows[4]
    assert len({row.index("0.") for row in rows[1:3]}) == 1  # means line up


def test_identical_scores_give_p_one_and_no_difference():
    result = stats.paired_comparison(BASELINE, BASELINE)
    assert result.p_value == 1.0 and math.isnan(result.statistic)
    assert result.mean_diff == 0.0 and result.ci_diff == (0.0, 0.0)
    assert result.verdict().endswith("no significant difference")


def test_a_constant_nonzero_difference_gives_p_zero_and_infinite_t_despite_rounding():
    a = [0.80, 0.90, 0.70]
    result = stats.paired_comparison(a, [0.81, 0.91, 0.71])  # differences equal up to rounding
    assert result.p_value == 0.0 and result.statistic == math.inf
    assert result.ci_diff == pytest.approx((0.01, 0.01))
    assert result.verdict().endswith("best is better")
    assert stats.paired_comparison(a, [0.79, 0.89, 0.69]).statistic == -math.inf


@pytest.mark.parametrize("a, b", [([0.8, 0.9], [0.8, 0.9, 0.7]), ([0.8], [0.9]), ([], [])],
                         ids=["unequal_lengths", "one_pair", "empty"])
def test_paired_comparison_rejects_unpaired_or_too_few_scores(a, b):
    with pytest.raises(ValueError):
        stats.paired_comparison(a, b)


TRIALS = [0.62, 0.81, 0.74, 0.88, 0.81, 0.55, 0.79]


def test_expected_max_is_non_decreasing_from_the_mean_to_below_the_max():
    curve = stats.expected_max(TRIALS)
    assert curve.shape == (len(TRIALS),)
    assert np.all(np.diff(curve) >= 0)
    assert curve[0] == pytest.approx(np.mean(TRIALS))
    assert curve[-1] < max(TRIALS)
    assert stats.expected_max(TRIALS, n_max=500)[-1] == pytest.approx(max(TRIALS))


def test_expected_max_of_equal_values_is_flat_at_that_value():
    np.testing.assert_array_equal(stats.expected_max([0.7] * 6), np.full(6, 0.7))


def test_expected_max_and_std_match_exhaustive_enumeration_of_draws():
    values = [0.3, 0.9, 0.5, 0.5]
    curve, std = stats.expected_max(values, n_max=3), stats.expected_max_std(values, n_max=3)
    for n in (1, 2, 3):
        maxima = [max(draw) for draw in itertools.product(values, repeat=n)]
        assert curve[n - 1] == pytest.approx(np.mean(maxima))
        assert std[n - 1] == pytest.approx(np.std(maxima))


def test_expected_max_matches_a_monte_carlo_estimate():
    rng = np.random.default_rng(42)
    draws = rng.choice(TRIALS, size=(200_000, len(TRIALS)))
    estimate = np.maximum.accumulate(draws, axis=1).mean(axis=0)
    np.testing.assert_allclose(stats.expected_max(TRIALS), estimate, atol=2e-3)


def test_expected_max_ignores_nan_trials():
    with_nan = TRIALS[:3] + [math.nan] + TRIALS[3:] + [math.nan]
    np.testing.assert_allclose(stats.expected_max(with_nan), stats.expected_max(TRIALS))


@pytest.mark.parametrize("values, n_max", [([math.nan, math.nan], None), ([], None), ([0.5], 0)],
                         ids=["all_nan", "empty", "n_max_zero"])
def test_expected_max_rejects_input_with_nothing_to_draw(values, n_max):
    with pytest.raises(ValueError):
        stats.expected_max(values, n_max)
