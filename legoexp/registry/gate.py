"""The promotion gate: when the evidence lets a candidate become ``@champion``.

The evidence is a paired multi-seed comparison on the test split (``comparison.runs``): the gate
passes when the lower bound of the 95% CI of the per-seed difference candidate - champion in
test_accuracy is above -tolerance (above 0 with ``require_better``).
"""

from dataclasses import dataclass

from legoexp.comparison.runs import seeds_text

DEFAULT_TOLERANCE = 0.01
RULE_HELP = ("Gate: promote when the lower bound of the 95% confidence interval of the paired per-seed "
             f"difference in test_accuracy (candidate - champion) is above -TOLERANCE (default {DEFAULT_TOLERANCE}), "
             "or above 0 with --require-better.")


@dataclass(frozen=True)
class Gate:
    tolerance: float
    require_better: bool

    @property
    def threshold(self) -> float:
        return 0.0 if self.require_better else -self.tolerance

    def rule(self) -> str:
        return (f"lower bound of the 95% CI of the paired difference (candidate - champion) in test_accuracy "
                f"> {self.threshold:+.4f}")

    def passes(self, result) -> bool:
        return result.ci_diff[0] > self.threshold

    def outcome(self, result, seeds) -> str:
        passed = self.passes(result)
        return (f"{'passed' if passed else 'failed'}: candidate - champion = {result.mean_diff:+.4f} "
                f"(95% CI {result.ci_diff[0]:+.4f}..{result.ci_diff[1]:+.4f}) over seeds {seeds_text(seeds)}; "
                f"lower bound {result.ci_diff[0]:+.4f} {'>' if passed else '<='} {self.threshold:+.4f}")
