"""Best vs baseline with evidence: the same seeds, the whole training split, the test split once.

Both configurations are trained with each of S seeds by the one training function and scored
once on the test split; the per-seed accuracies are paired by seed and summarised by
``stats.paired_comparison`` (means with 95% CIs, the paired difference, a paired t-test). The
model kept for each configuration is the one of its median seed, so what gets registered is a
typical fit, not the luckiest. The fits can run elsewhere (``fit``: the sweep's fold workers, all
of them at once); they give the same networks wherever they run. Nothing here knows about MLflow
or Optuna.
"""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np

from legoexp.comparison.stats import PairedResult, paired_comparison
from legoexp.config import TrainConfig
from legoexp.evaluate import evaluate
from legoexp.ops import timings
from legoexp.train import train


@dataclass
class Arm:
    name: str
    config: TrainConfig
    accuracies: list[float]
    nets: list

    @property
    def median_index(self) -> int:
        """Index of the seed whose test accuracy is the (lower) median of the S seeds."""
        order = np.argsort(self.accuracies, kind="stable")
        return int(order[(len(order) - 1) // 2])


@dataclass
class Comparison:
    baseline: Arm
    best: Arm
    result: PairedResult


Fit = Callable[[list[TrainConfig]], Iterable]  # configs -> their trained networks, in order


def run_arm(name: str, config: TrainConfig, seeds: list[int], train_split, test_split,
            progress: Callable[[str], None] | None = None, fit: Fit | None = None) -> Arm:
    return _run_arms({name: config}, seeds, train_split, test_split, progress, fit)[0]


def compare(baseline: TrainConfig, best: TrainConfig, seeds: list[int], train_split, test_split,
            progress: Callable[[str], None] | None = None, fit: Fit | None = None) -> Comparison:
    a, b = _run_arms({"baseline": baseline, "best": best}, seeds, train_split, test_split, progress, fit)
    return Comparison(a, b, paired_comparison(a.accuracies, b.accuracies))


def fit_configs(configs: Iterable[TrainConfig], seeds: list[int]) -> list[TrainConfig]:
    """The fits of a comparison of ``configs`` over ``seeds``, in the order it trains them."""
    return [replace(config, seed=seed) for config in configs for seed in seeds]


def _run_arms(configs: dict[str, TrainConfig], seeds, train_split, test_split, progress, fit) -> list[Arm]:
    """Every (config, seed) fit handed to ``fit`` at once (default: trained here, one by one)."""
    arms = [Arm(name, config, [], []) for name, config in configs.items()]
    runs = fit_configs(configs.values(), seeds)
    if fit is None:
        nets = (train(c, train_split.images, train_split.labels).net for c in runs)
    else:
        nets = iter(fit(runs))
    for arm in arms:
        for seed in seeds:
            with timings.training():
                net = next(nets)
                arm.accuracies.append(evaluate(net, test_split.images, test_split.labels).accuracy)
            arm.nets.append(net)
            if progress:
                progress(f"{arm.name} seed {seed}: test_accuracy {arm.accuracies[-1]:.4f}")
    return arms


def summary_metrics(result: PairedResult, name_a: str = "baseline", name_b: str = "best") -> dict[str, float]:
    """A comparison's numbers under the project's metric names: each configuration's mean test
    accuracy and its CI (``{name}_test_accuracy_mean``, ``_ci_low``, ``_ci_high``), the paired
    difference b - a (``diff_mean``, ``diff_ci_low``, ``diff_ci_high``) and ``p_value``;
    non-finite values (a degenerate test) are left out."""
    metrics = {f"{name_a}_test_accuracy_mean": result.mean_a, f"{name_b}_test_accuracy_mean": result.mean_b,
               f"{name_a}_test_accuracy_ci_low": result.ci_a[0], f"{name_a}_test_accuracy_ci_high": result.ci_a[1],
               f"{name_b}_test_accuracy_ci_low": result.ci_b[0], f"{name_b}_test_accuracy_ci_high": result.ci_b[1],
               "diff_mean": result.mean_diff, "diff_ci_low": result.ci_diff[0], "diff_ci_high": result.ci_diff[1],
               "p_value": result.p_value}
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
