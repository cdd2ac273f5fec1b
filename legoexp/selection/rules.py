"""The ship rules: which of a study's candidates to compare with the baseline and register.

A study's candidates are its top-k complete trials by search CV (single-objective) or its Pareto
front of CV accuracy against parameter count (multi-objective). Each rule picks one:

- ``best``: the highest search CV, as every sweep did before the rules (no other candidate).
- ``simplest-within``: the one-standard-error rule of Breiman et al. (1984) and Hastie, Tibshirani
  & Friedman (ESL, 7.10), made paired and repeated: the candidates are re-scored on the same fresh
  folds, and the rule takes the smallest whose paired difference from the most accurate one has a
  95% lower bound above ``-tolerance``.
- ``rescored``: the most accurate candidate by the re-scored CV. The search CV of the top trial is
  the maximum of many noisy estimates (the winner's curse); fresh folds, the same for every
  candidate, rank them without it.

Intervals of re-scored CV use ``stats.corrected_mean_ci`` (the folds' training sets overlap).
Nothing here trains, logs or reads the test split.
"""

from dataclasses import dataclass, field

import numpy as np

from legoexp.comparison.stats import corrected_mean_ci
from legoexp.errors import UserError
from legoexp.model import size
from legoexp.study.design import accuracy, fold_accuracies, param_count

RULES_NEEDING_CANDIDATES = ("simplest-within", "rescored")


@dataclass(frozen=True)
class Candidate:
    """A complete trial that a rule may pick: its point of the search space, search CV and size."""
    number: int
    params: dict  # the searched hyperparameters
    search_cv: float  # its mean fold accuracy in the search
    folds: tuple[float, ...]  # its folds' accuracies in the search
    param_count: int
    macs_per_image: int

    @classmethod
    def of(cls, trial) -> "Candidate":
        cost = size(trial.params["hidden1"], trial.params["hidden2"])
        return cls(trial.number, dict(trial.params), float(accuracy(trial)), tuple(fold_accuracies(trial)),
                   cost["param_count"], cost["macs_per_image"])

    @property
    def key(self) -> tuple:
        """Smaller first: parameters, then multiply-adds, then the earlier trial."""
        return self.param_count, self.macs_per_image, self.number


def candidates(complete: list, rule: str, top_k: int, front: list | None = None) -> list["Candidate"]:
    """The candidates of ``rule`` among the ``complete`` trials (FrozenTrials), smallest first: the
    best by search CV alone for ``best``; else ``front`` (a multi-objective study's Pareto front) or the
    ``top_k`` by search CV. Trials of the same point count once (the first). A rule that compares
    needs two complete trials: a ``UserError`` saying so otherwise."""
    if rule in RULES_NEEDING_CANDIDATES and len(complete) < 2:
        raise UserError(f"select={rule!r} compares candidates, but the study has {len(complete)} complete trial(s); "
                        "give it more --trials (or --select best), then rerun the same command")
    ranked = sorted(complete, key=lambda t: (-accuracy(t), param_count(t.params), t.number))
    pool = ranked[:1] if rule == "best" else sorted(front, key=lambda t: t.number) if front is not None else ranked
    unique: dict = {}
    for trial in pool:  # in the pool's order: the first trial of a point stands for it
        unique.setdefault(tuple(sorted(trial.params.items())), trial)
    found = [Candidate.of(t) for t in unique.values()]
    if rule != "best" and front is None:
        found = found[:top_k]
    return sorted(found, key=lambda c: c.key)


@dataclass(frozen=True)
class Choice:
    """What a rule picked, from which candidates, on which re-scored evidence."""
    rule: str
    tolerance: float
    candidates: list[Candidate]  # smallest first
    scores: dict[int, list[float]]  # trial number -> re-scored accuracies, one per (repeat, fold), paired
    folds: int  # k of the re-scoring's k-fold CV
    chosen: Candidate
    most_accurate: Candidate  # by re-scored CV
    latency: dict[int, dict] = field(default_factory=dict)  # trial number -> latency.measure's

    def rescored(self, c: Candidate) -> tuple[float, float, float]:
        """Mean re-scored CV of ``c`` and its 95% CI."""
        return corrected_mean_ci(self.scores[c.number], self.folds)

    def difference(self, c: Candidate) -> tuple[float, float, float]:
        """``c`` minus the most accurate candidate, paired on the re-scoring's folds: mean, 95% CI."""
        a, b = self.scores[c.number], self.scores[self.most_accurate.number]
        return corrected_mean_ci([x - y for x, y in zip(a, b)], self.folds)

    def table(self) -> str:
        """The candidates, smallest first: size, search CV, re-scored CV, the paired difference, the pick."""
        header = (f"{'trial':>5}  {'params':>9}  {'MACs/img':>9}  {'search CV':>9}  {'re-scored CV (95% CI)':>25}  "
                  f"{'vs most accurate (95% CI)':>28}")
        latency = any(self.latency.values())
        if latency:
            header += f"  {'ms b1':>6}  {'ms b100':>7}"
        lines = [header]
        for c in self.candidates:
            mean, lo, hi = self.rescored(c)
            d, dlo, dhi = self.difference(c)
            line = (f"{c.number:>5}  {c.param_count:>9,}  {c.macs_per_image:>9,}  {c.search_cv:>9.4f}  "
                    f"{mean:>8.4f} ({lo:.4f}..{hi:.4f})  {d:>+9.4f} ({dlo:+.4f}..{dhi:+.4f})")
            if latency:
                ms = self.latency.get(c.number, {})
                line += f"  {ms.get('latency_batch1_ms', float('nan')):>6.3f}  {ms.get('latency_batch100_ms', float('nan')):>7.3f}"
            marks = [m for m, on in (("chosen", c == self.chosen), ("most accurate", c == self.most_accurate)) if on]
            lines.append(line + (f"  <- {', '.join(marks)}" if marks else ""))
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: the rule, its pick and why."""
        c, m = self.chosen, self.most_accurate
        if self.rule == "best":
            return f"select=best: trial {c.number}, the highest search CV ({c.search_cv:.4f}), {c.param_count:,} parameters"
        if self.rule == "rescored":
            return (f"select=rescored: trial {c.number}, the most accurate of {len(self.candidates)} candidates "
                    f"re-scored ({self.rescored(c)[0]:.4f}), {c.param_count:,} parameters")
        d, lo, _ = self.difference(c)
        return (f"select=simplest-within (tolerance {self.tolerance:g}): trial {c.number}, {c.param_count:,} parameters "
                f"against {m.param_count:,} of the most accurate (trial {m.number}); paired difference {d:+.4f}, "
                f"95% lower bound {lo:+.4f} > -{self.tolerance:g}")


def pick(rule: str, found: list[Candidate], scores: dict[int, list[float]], folds: int,
         tolerance: float) -> Choice:
    """Apply ``rule`` to the re-scored candidates ``found`` (smallest first; ``best``'s one)."""
    if rule == "best":
        return Choice(rule, tolerance, found, scores, folds, found[0], found[0])
    # the highest mean re-scored CV; of equals, the smaller
    most = max(found, key=lambda c: (float(np.mean(scores[c.number])), [-k for k in c.key]))
    chosen = most
    if rule == "simplest-within":
        ranked = Choice(rule, tolerance, found, scores, folds, most, most)
        chosen = next(c for c in found if c == most or ranked.difference(c)[1] > -tolerance)
    return Choice(rule, tolerance, found, scores, folds, chosen, most)
