"""The optimism of the pick: how much its search score promised over what the test split gave.

The chosen trial's search CV is the best (or a best) of many noisy estimates, so it is biased
upward: the winner's curse (Cawley & Talbot 2010). Three numbers tell how far: its score in the
search, its re-scored CV (fresh folds of the training split, the same size of fits), and its test
accuracy over the comparison seeds. The optimism is search CV minus test, per seed, with a
Student-t 95% CI over the seeds (the search CV is one number; its own noise is not in the
interval). Search CV minus re-scored CV is the selection's part; re-scored CV minus test is the
rest (fits on (k-1)/k of the training split against all of it, and the test split's own draw).
"""

from dataclasses import dataclass

from legoexp.comparison.stats import mean_ci


@dataclass(frozen=True)
class Optimism:
    trial: int
    search_cv: float
    rescored_cv: tuple[float, float, float]  # mean, 95% CI
    test: tuple[float, float, float]  # mean test accuracy over the seeds, 95% CI
    optimism: tuple[float, float, float]  # search CV - test: mean, 95% CI
    rule: str = "best"

    @property
    def label(self) -> str:
        """The pick as charts and tables name it."""
        return f"{'best' if self.rule == 'best' else 'chosen'} (trial {self.trial})"

    def metrics(self) -> dict[str, float]:
        names = {"rescored_cv": self.rescored_cv, "optimism": self.optimism}
        out = {"search_cv": self.search_cv}
        for name, (mean, lo, hi) in names.items():
            out |= {f"{name}_mean": mean, f"{name}_ci_low": lo, f"{name}_ci_high": hi}
        return out

    def text(self) -> str:
        (r, rlo, rhi), (t, tlo, thi), (o, olo, ohi) = self.rescored_cv, self.test, self.optimism
        return (f"the pick (trial {self.trial}): search CV {self.search_cv:.4f}, re-scored CV {r:.4f} "
                f"(95% CI {rlo:.4f}..{rhi:.4f}), test {t:.4f} ({tlo:.4f}..{thi:.4f})\n"
                f"optimism of the pick = search CV - test = {o:+.4f} (95% CI {olo:+.4f}..{ohi:+.4f}); "
                f"of it, search - re-scored CV = {self.search_cv - r:+.4f} is the selection's")


def of(choice, test_accuracies) -> Optimism:
    """The optimism of ``choice.chosen`` (a ``rules.Choice``) given its per-seed test accuracies."""
    c = choice.chosen
    return Optimism(c.number, c.search_cv, choice.rescored(c), mean_ci(test_accuracies),
                    mean_ci([c.search_cv - a for a in test_accuracies]), choice.rule)
