"""Is the tuned configuration really better than the baseline, and what did the sweep buy?

Both configurations are trained with the same seeds and scored once on the test set, so their
accuracies are paired by seed: :func:`paired_comparison` gives Student-t confidence intervals
and a paired t-test, and calls a difference significant when the interval of the per-seed
differences excludes 0 (for a paired t-test, the same as p < 1 - confidence).
:func:`expected_max` is the "show your work" curve of Dodge et al. (2019): the expected best
validation score of a sweep of n trials, estimated from the trials actually run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st


def _floats(values, name: str, finite: bool = True) -> np.ndarray:
    arr = np.asarray(values, dtype=float).reshape(-1)
    if not arr.size:
        raise ValueError(f"{name} is empty")
    if finite and not np.all(np.isfinite(arr)):
        # A NaN test accuracy is a failed run; averaging it away would hide that.
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


def _constant(arr: np.ndarray) -> bool:
    # Differences equal up to float rounding (0.81 - 0.80 vs 0.91 - 0.90) count as equal;
    # scipy would otherwise warn of catastrophic cancellation and return noise.
    return bool(np.ptp(arr) <= 1e-12 * max(1.0, float(np.max(np.abs(arr)))))


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its two-sided Student-t confidence interval.
    One value or zero spread gives the degenerate interval ``(mean, mean)``."""
    arr = _floats(values, "values")
    mean = float(np.mean(arr))
    if arr.size < 2 or _constant(arr):
        return mean, mean, mean
    half = _st.t.ppf((1 + confidence) / 2, arr.size - 1) * np.std(arr, ddof=1) / math.sqrt(arr.size)
    return mean, float(mean - half), float(mean + half)


def corrected_mean_ci(values, folds: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)`` of scores from repeated k-fold cross-validation (``folds`` = k), one per
    (repeat, fold): the Student-t interval with the corrected resampled variance of Nadeau & Bengio
    (2003), ``(1/n + 1/(k-1)) s^2``, as Bouckaert & Frank (2004) use it for repeated CV. The folds'
    training sets overlap, so their scores are not independent and the plain ``s^2/n`` would make
    the interval far too narrow. Paired differences of two configurations on the same folds are
    scores like any other."""
    arr = _floats(values, "values")
    mean = float(np.mean(arr))
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if arr.size < 2 or _constant(arr):
        return mean, mean, mean
    half = _st.t.ppf((1 + confidence) / 2, arr.size - 1) * math.sqrt(
        (1 / arr.size + 1 / (folds - 1)) * np.var(arr, ddof=1))
    return mean, float(mean - half), float(mean + half)


def format_p(p: float) -> str:
    """``p=0.104``, ``p=0.0034``, ``p<0.001``: three significant digits, so 0.0495 stays below 0.05."""
    return "p<0.001" if p < 0.001 else f"p={p:.3g}"


@dataclass(frozen=True)
class PairedResult:
    """Paired comparison of configuration a (baseline) and b (best); differences are b - a."""
    mean_a: float
    ci_a: tuple[float, float]
    mean_b: float
    ci_b: tuple[float, float]
    mean_diff: float
    ci_diff: tuple[float, float]
    test: str
    statistic: float
    p_value: float
    n: int
    confidence: float = 0.95

    @property
    def significant(self) -> bool:
        return not self.ci_diff[0] <= 0 <= self.ci_diff[1]

    def _outcome(self, name_a: str, name_b: str) -> str:
        if not self.significant:
            return "no significant difference"
        return f"{name_b if self.mean_diff > 0 else name_a} is better"

    def verdict(self, name_a: str = "baseline", name_b: str = "best") -> str:
        """One line: difference, its CI, the test's p and the conclusion."""
        return (f"{name_b} - {name_a} = {self.mean_diff:+.4f} test accuracy ({self.confidence:.0%} CI "
                f"{self.ci_diff[0]:+.4f}..{self.ci_diff[1]:+.4f}), {self.test} "
                f"{format_p(self.p_value)} over {self.n} seeds: {self._outcome(name_a, name_b)}")

    def as_table(self, name_a: str = "baseline", name_b: str = "best") -> str:
        """A fixed-width summary to print: a row per configuration, one for the difference."""
        diff = f"{name_b} - {name_a}"
        w = max(len(diff), len("configuration"))
        return "\n".join([
            f"{'configuration':<{w}}  {'mean':>8}  {self.confidence:.0%} CI",
            f"{name_a:<{w}}  {self.mean_a:8.4f}  {self.ci_a[0]:.4f}..{self.ci_a[1]:.4f}",
            f"{name_b:<{w}}  {self.mean_b:8.4f}  {self.ci_b[0]:.4f}..{self.ci_b[1]:.4f}",
            f"{diff:<{w}}  {self.mean_diff:+8.4f}  {self.ci_diff[0]:+.4f}..{self.ci_diff[1]:+.4f}",
            f"{self.test} over {self.n} seeds: t={self.statistic:.3g}, "
            f"{format_p(self.p_value)} -> {self._outcome(name_a, name_b)}"])


def paired_comparison(a, b, confidence: float = 0.95) -> PairedResult:
    """Compare per-seed scores ``a`` (baseline) and ``b`` (best) with a paired t-test on b - a.

    If every pair differs by the same d, t is 0/0 or d/0 and scipy gives nan; we report the
    limit instead: d = 0 gives p = 1.0 and statistic nan, else p = 0.0 and statistic +-inf.
    """
    a, b = _floats(a, "a"), _floats(b, "b")
    if a.size != b.size:
        raise ValueError(f"a and b must be paired per seed, got {a.size} and {b.size} values")
    if a.size < 2:
        raise ValueError(f"need at least 2 pairs for a paired t-test, got {a.size}")
    mean_diff, *ci_diff = mean_ci(b - a, confidence)
    if not _constant(b - a):
        result = _st.ttest_rel(b, a)  # b first, so a positive t means b (best) scored higher
        statistic, p_value = float(result.statistic), float(result.pvalue)
    elif abs(mean_diff) <= 1e-12:
        # Rounding noise must not print as "+0.0000 ... best is better".
        statistic, p_value, mean_diff, ci_diff = math.nan, 1.0, 0.0, (0.0, 0.0)
    else:
        statistic, p_value = math.copysign(math.inf, mean_diff), 0.0
    (mean_a, *ci_a), (mean_b, *ci_b) = mean_ci(a, confidence), mean_ci(b, confidence)
    return PairedResult(mean_a, tuple(ci_a), mean_b, tuple(ci_b), mean_diff, tuple(ci_diff),
                        "paired t-test", statistic, p_value, int(a.size), confidence)


def _max_weights(values, n_max: int | None) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(_floats(values, "values", finite=False))
    v = v[np.isfinite(v)]  # failed or pruned trials report NaN; they are not draws
    if not v.size:
        raise ValueError("values holds no finite trial results")
    n_max = v.size if n_max is None else int(n_max)
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    # Row n-1, column i-1: P(max of n draws = v_i) = (i/N)^n - ((i-1)/N)^n, v ascending (tied
    # values split the probability of being the max between them, which sums correctly).
    cdf = (np.arange(v.size + 1) / v.size)[None, :] ** np.arange(1, n_max + 1)[:, None]
    return v, np.diff(cdf, axis=1)


def expected_max(values, n_max: int | None = None) -> np.ndarray:
    """Expected best of n results drawn uniformly with replacement from ``values``, for
    n = 1..n_max (default: the number of non-NaN values). Starts at the mean, rises to the max."""
    v, weights = _max_weights(values, n_max)
    # Rounding can make a flat stretch wobble by 1e-16; the true curve never goes down and
    # never leaves [min, max] (so equal values give exactly that value).
    return np.clip(np.maximum.accumulate(weights @ v), v[0], v[-1])


def expected_max_std(values, n_max: int | None = None) -> np.ndarray:
    """Standard deviation of that best of n, under the same sampling as :func:`expected_max`."""
    v, weights = _max_weights(values, n_max)
    # sum w (v - mean)^2 rather than E[max^2] - E[max]^2, which can cancel to below zero.
    return np.sqrt(np.sum(weights * (v[None, :] - (weights @ v)[:, None]) ** 2, axis=1))
