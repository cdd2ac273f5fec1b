"""What a sweep shows while it runs: a bar in a terminal, one line per finished trial or fit elsewhere.

A log (a file, a pipe: CI, ``kubectl logs``, ``| tee``) gets no bar, since tqdm draws nothing
there; it gets one line per trial as the trial finishes: its number, how it ended (complete,
pruned after fold k, failed and why), its ``val_accuracy``, the best so far and its trial, the
time since the search started and how many trials are still needed; and one line per fit of the
final comparison. ``quiet`` shows neither. ``Trials`` reads the study's trials, so it reports
trials that other worker processes ran just as well as this process's own.
"""

import sys
import time

from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from legoexp.study.design import FINISHED, accuracy  # what --trials counts; a trial's CV accuracy


def _style(quiet: bool, stream) -> str:
    if quiet:
        return "quiet"
    return "bar" if stream.isatty() else "lines"


def outcome(trial: FrozenTrial) -> str:
    """How a finished trial ended, in words."""
    if trial.state == TrialState.PRUNED:
        return f"pruned after fold {len(trial.intermediate_values)}"
    if trial.state == TrialState.FAIL:
        return f"failed: {trial.user_attrs.get('fail_reason', 'no reason recorded')}"
    return trial.state.name.lower()


class Trials:
    """Progress of the search towards ``total`` finished trials; ``update`` with the study's trials."""

    def __init__(self, total: int, trials: list[FrozenTrial], quiet: bool = False, stream=None):
        self.total, self.stream = total, stream or sys.stderr
        self.style = _style(quiet, self.stream)
        self.started = time.monotonic()
        finished = [t for t in trials if t.state.is_finished()]
        self.seen = {t.number for t in finished}
        self.done = sum(t.state in FINISHED for t in finished)
        self.pruned = sum(t.state == TrialState.PRUNED for t in finished)
        self.best = max((t for t in finished if t.state == TrialState.COMPLETE), key=accuracy, default=None)
        self.unseen = self._first_unseen(0)
        self.bar = None
        if self.style == "bar":
            self.bar = tqdm(total=total, initial=min(self.done, total), desc="trials", unit="trial",
                            file=self.stream, dynamic_ncols=True)
        elif self.style == "lines" and self.done:
            print(f"resuming: {self.done} of {total} trials finished before", file=self.stream, flush=True)

    def update(self, trials: list[FrozenTrial]) -> None:
        """Show what finished since the last update. ``trials``: all the study's, in number order (as
        ``get_trials`` gives them); only those from the first not yet seen finished on are read, so an
        update costs what is new, not the study's size."""
        new = sorted((t for t in trials[self.unseen:] if t.state.is_finished() and t.number not in self.seen),
                     key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))
        for trial in new:
            self.seen.add(trial.number)
            self.done += trial.state in FINISHED
            self.pruned += trial.state == TrialState.PRUNED
            if trial.state == TrialState.COMPLETE and (self.best is None or accuracy(trial) > accuracy(self.best)):
                self.best = trial
            if self.style == "lines":
                print(self.line(trial), file=self.stream, flush=True)
        self.unseen = self._first_unseen(self.unseen)
        if self.bar is not None:
            self.bar.n = min(self.done, self.total)
            self.bar.set_postfix_str(f"pruned {self.pruned}" + (f", best val_accuracy {accuracy(self.best):.4f}"
                                                                if self.best else ""))

    def _first_unseen(self, number: int) -> int:
        """The first trial number from ``number`` on not yet seen finished (all before it were)."""
        while number in self.seen:
            number += 1
        return number

    def line(self, trial: FrozenTrial) -> str:
        value = f"val_accuracy {accuracy(trial):.4f}" if trial.state == TrialState.COMPLETE else ""
        best = f"best {accuracy(self.best):.4f} (trial {self.best.number})" if self.best else "best -"
        return (f"trial {trial.number:<4} {outcome(trial):<22} {value:<20} {best:<25} "
                f"elapsed {time.monotonic() - self.started:6.1f} s  {max(self.total - self.done, 0)} left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Fits:
    """Progress of ``total`` fits (the comparison's seeds): call it with each fit's result line."""

    def __init__(self, total: int, quiet: bool = False, stream=None):
        self.total, self.stream = total, stream or sys.stderr
        self.style = _style(quiet, self.stream)
        self.started, self.done = time.monotonic(), 0
        self.bar = (tqdm(total=total, desc="fits", unit="fit", file=self.stream, dynamic_ncols=True)
                    if self.style == "bar" else None)

    def __call__(self, result: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(result, refresh=False)
            self.bar.update(1)
            if self.done == self.total:
                self.bar.close()
        elif self.style == "lines":
            print(f"fit {self.done}/{self.total}  {result:<40} elapsed {time.monotonic() - self.started:6.1f} s  "
                  f"{self.total - self.done} left", file=self.stream, flush=True)
