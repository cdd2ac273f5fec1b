"""One trial's life: suggested, cross-validated fold by fold with reports to the pruner, told, logged.

The objective, in the shape of optuna-examples, is ``suggest`` (a point of the search space, as a
fit's config) and ``cross_validate`` (each fold's accuracy reported to the pruner, which may stop
the trial; the mean is the score). ``Trials`` gives a claimed trial its MLflow child run and its
heartbeat, and ends both as the trial ends: the run holds the trial's params, its folds'
accuracies and ``val_accuracy``, and ends FINISHED with tag ``state`` = complete or pruned, FAILED
with a ``fail_reason``, or KILLED when interrupted. The search driver (``study.search``) decides
when to start and finish them: it starts the next trial's folds before the current one's are in.
"""

import contextlib
import sys
from collections.abc import Iterable

import numpy as np
import optuna
from mlflow.tracking import MlflowClient
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from legoexp import model, tracking
from legoexp.config import TrainConfig, sweep_config
from legoexp.ops import faults
from legoexp.ops.command import Terminated
from legoexp.study import claims, design
from legoexp.train import Diverged


def suggest(trial: optuna.Trial, space: dict, cfg: dict) -> TrainConfig:
    """The fit a trial asks for: a point of ``space``, at the sweep's epochs and seed."""
    return sweep_config(cfg, design.suggest(trial, space))


def cross_validate(trial: optuna.Trial, fold_accuracies: Iterable[float], accuracies: list[float],
                   pruned: bool = True) -> float:
    """Each fold's accuracy, appended to ``accuracies`` and reported to the pruner, which may end the
    trial (``optuna.TrialPruned``) after any fold; the score is their mean. ``pruned=False`` (a
    multi-objective study, which Optuna cannot prune): the folds are only collected (the
    ``fold_accuracies`` user attribute holds them, for the Pareto front's error bars)."""
    with contextlib.closing(fold_accuracies):
        for k, accuracy in enumerate(fold_accuracies):
            accuracies.append(accuracy)
            if not pruned:
                faults.point("trial.fold")
                continue
            trial.report(accuracy, k)
            prune = trial.should_prune()
            faults.point("trial.fold")
            if prune:
                raise optuna.TrialPruned(f"pruned after fold {k + 1}")
    if not pruned:
        trial.set_user_attr("fold_accuracies", accuracies)
    return float(np.mean(accuracies))


def _stop_reason(error: KeyboardInterrupt) -> str:
    return "terminated" if isinstance(error, Terminated) else "interrupted"


class Running:
    """A claimed trial between its start and its end: its folds' results to come, its run, its heartbeat."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.fold_results = None
        self.run_id: str | None = None
        self.creating = False  # its run is being made: it may exist while run_id is still None
        self.accuracies: list[float] = []
        self.heartbeat = contextlib.ExitStack()


class Trials:
    """Starts and ends the trials of one study in this process, each with its MLflow run under the parent."""

    def __init__(self, study: optuna.Study, storage, space: dict, cfg: dict, runner, folds: list, parent_id: str,
                 experiment_id: str, params: dict):
        """``storage``: the study's, as opened (not Optuna's cache of it: a trial taken by another process
        must read as taken). ``params``: what every trial run logs besides its config (the data's provenance)."""
        self.study, self.storage, self.space, self.cfg = study, storage, space, cfg
        self.runner, self.folds = runner, folds
        self.parent_id, self.experiment_id, self.params = parent_id, experiment_id, params
        self.client = MlflowClient()
        self.multi = design.is_multi(cfg["objectives"])

    def start(self, trial: optuna.Trial) -> Running:
        """Hand a claimed trial's folds to the fold runner, then make its MLflow child run while they train."""
        faults.point("trial.claimed")
        config = suggest(trial, self.space, self.cfg)
        running = Running(trial)
        try:
            running.fold_results = self.runner.accuracies(config, self.folds)
            running.heartbeat.enter_context(claims.Heartbeat(self.storage, trial._trial_id,
                                                             self.cfg["heartbeat"]))
            running.creating = True  # from here on a run of this trial may exist before its id is known here
            run = self.client.create_run(
                self.experiment_id, run_name=f"trial-{trial.number:03d}",
                tags={"mlflow.parentRunId": self.parent_id, "legoexp.kind": "trial", "legoexp.study":
                      self.study.study_name, "trial_number": str(trial.number), "state": "running"})
            faults.point("trial.run_made")
            running.run_id = run.info.run_id
            trial.set_user_attr("mlflow_run_id", running.run_id)
            trial.set_user_attr("mlflow_run_url", tracking.run_url(self.experiment_id, running.run_id))  # shown by optuna-dashboard
            tracking.log_params(running.run_id, {**config.as_params(), **self.params,
                                                 **model.size(config.hidden1, config.hidden2),
                                                 "trial_number": trial.number, "folds": self.cfg["folds"]})
        except BaseException as e:
            self.abandon(running, e)
            raise
        return running

    def finish(self, running: Running) -> TrialState | None:
        """Score a started trial, tell Optuna how it ended, then end its run the same way. None when
        the trial was taken from this process meanwhile (its heartbeat was silent too long: stopped,
        or cut off from the storage) and failed by another: its result is dropped, so nothing is
        counted twice."""
        trial, run_id, accuracies = running.trial, running.run_id, running.accuracies
        state, reason, value = TrialState.COMPLETE, None, None
        try:
            with running.heartbeat:
                try:
                    value = cross_validate(trial, running.fold_results, accuracies, pruned=not self.multi)
                except optuna.TrialPruned:
                    state = TrialState.PRUNED
                except Diverged as e:
                    state, reason = TrialState.FAIL, str(e)
                    trial.set_user_attr("fail_reason", reason)
                if self.multi and value is not None:  # the second objective: the net's parameter count
                    value = [value, design.param_count(trial.params)]
                taken = self.study.tell(trial, value, state=state, skip_if_finished=True).state != state
        except UpdateFinishedTrialError:
            taken = True
        except BaseException as e:
            if not isinstance(e, KeyboardInterrupt) and self._taken(trial):  # e.g. a storage call cut off while the trial was failed
                taken = True
            else:
                self.abandon(running, e)
                raise
        if taken:
            reason = "its trial was failed by another process while this one was silent; its result is dropped"
            self.end_run(run_id, accuracies, TrialState.FAIL, reason, status="KILLED")
            print(f"trial {trial.number}: {reason}", file=sys.stderr)
            return None
        faults.point("trial.told")
        self.end_run(run_id, accuracies, state, reason)
        return state

    def abandon(self, running: Running, error: BaseException) -> None:
        """A started trial this process will not finish, because of ``error``: KILLED if it is a
        KeyboardInterrupt, else FAILED. Best effort: the store may be what failed; a trial left
        RUNNING is failed later by the watchers, its owner being gone."""
        interrupted = isinstance(error, KeyboardInterrupt)
        faults.point("trial.abandon")
        if running.fold_results is not None:
            running.fold_results.close()
        running.heartbeat.close()
        reason = _stop_reason(error) if interrupted else f"{type(error).__name__}: {error}"
        with contextlib.suppress(Exception):
            for run_id in [running.run_id] if running.run_id is not None else self._runs_made(running):
                self.end_run(run_id, running.accuracies, TrialState.FAIL, reason,
                             status="KILLED" if interrupted else "FAILED")
            running.trial.set_user_attr("fail_reason", reason)
            self.study.tell(running.trial, state=TrialState.FAIL, skip_if_finished=True)

    def _runs_made(self, running: Running) -> list[str]:
        """The RUNNING runs of a trial that this process stopped while making its run (a signal in
        ``create_run``, after the store had it and before its id came back): this process owns the
        trial, so they are its."""
        if not running.creating:
            return []
        return [r.info.run_id for r in self._running_runs(f" and tags.trial_number = '{running.trial.number}'")]

    def _running_runs(self, where: str = "") -> list:
        """This study's trial runs that are RUNNING (and match ``where``, a further ``and ...`` of the filter)."""
        return self.client.search_runs([self.experiment_id], f"tags.`legoexp.study` = '{self.study.study_name}' and "
                                       f"tags.`legoexp.kind` = 'trial' and attributes.status = 'RUNNING'{where}")

    def _taken(self, trial) -> bool:
        """True if another process has ended ``trial`` (the storage says so when it can be asked)."""
        try:
            return self.storage.get_trial(trial._trial_id).state != TrialState.RUNNING
        except Exception:
            return False

    def end_run(self, run_id, accuracies, state: TrialState, reason=None, status=None) -> None:
        """The folds' accuracies and the outcome (tags ``state``, ``fail_reason``) in one batch, then
        the run's status: FINISHED for a complete or pruned trial, else ``status`` (default FAILED)."""
        metrics = {f"val_accuracy_fold{k}": a for k, a in enumerate(accuracies)}
        if state == TrialState.COMPLETE:
            metrics["val_accuracy"] = float(np.mean(accuracies))
        outcome = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(state, "failed")
        tracking.log_metrics(run_id, metrics, tags={"state": outcome} | ({"fail_reason": reason} if reason else {}))
        self.client.set_terminated(run_id, "FINISHED" if outcome != "failed" else status or "FAILED")

    def kill_run(self, trial, reason: str) -> None:
        """End the run of a trial that another process's death left RUNNING: KILLED, with the reason."""
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and tracking.run_exists(run_id):
            tracking.set_tags(run_id, {"state": "failed", "fail_reason": reason})
            self.client.set_terminated(run_id, "KILLED")

    def end_stray_runs(self) -> None:
        """End, as their trial ended, the trial runs still RUNNING whose trial has ended: their process
        was killed between telling Optuna and ending the run, or could not reach the tracking store."""
        ended = {str(t.number): t for t in self.study.get_trials(deepcopy=False) if t.state != TrialState.RUNNING}
        for run in self._running_runs():
            trial = ended.get(run.data.tags.get("trial_number"))
            if trial is None:
                continue
            if trial.user_attrs.get("mlflow_run_id") == run.info.run_id and trial.state != TrialState.FAIL:
                accuracies = design.fold_accuracies(trial)
                self.end_run(run.info.run_id, accuracies, trial.state)
            else:  # failed, or a run its process made but never linked to the trial before it died
                reason = trial.user_attrs.get("fail_reason", "its process could not end it")
                self.end_run(run.info.run_id, [], TrialState.FAIL, reason, status="KILLED")
