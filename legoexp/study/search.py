"""One sweep, run: the parent MLflow run and the trials as child runs (``report`` does what follows).

``Search`` ties an Optuna study to MLflow runs made with ``MlflowClient`` (not the fluent API,
so nothing depends on which run is "active" in which process). A trial's run is created when
the trial starts, holds the baseline's param keys, and ends FINISHED with tag ``state`` =
complete or pruned, FAILED with a ``fail_reason``, or KILLED when interrupted.
"""

import contextlib
import math
import os
import sys
import time
import warnings

import mlflow
import numpy as np
import optuna
from mlflow.tracking import MlflowClient
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from legoexp import tracking
from legoexp.config import TrainConfig, sweep_config
from legoexp.errors import ConfigError, UserError
from legoexp.ops import faults
from legoexp.study import claims, design, folds, progress, workers
from legoexp.study.storage import LockLost
from legoexp.train import Diverged

optuna.logging.set_verbosity(optuna.logging.WARNING)
# WilcoxonPruner and the matplotlib plots are marked experimental; the warnings say nothing to a user
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class Search:
    def __init__(self, cfg, space, baseline: TrainConfig, source, train_split, storage, storage_label, lock, runner,
                 deadline: float = math.inf):
        """Load or create the study; call it holding ``lock``, the study's lock (``storage.StudyLock``).
        ``deadline``: the ``time.time()`` after which no trial is claimed (the command's ``--timeout``)."""
        self.cfg, self.space, self.baseline, self.deadline = cfg, space, baseline, deadline
        self.source, self.train_split, self.storage, self.lock = source, train_split, storage, lock
        self.watch = claims.Watch(cfg["heartbeat"])
        self.client = MlflowClient()
        launched = os.environ.get("MLFLOW_RUN_ID")  # `mlflow run` made a run: it becomes the parent
        self.launched_run = launched
        self.experiment_id = tracking.experiment_id(cfg["experiment_name"], launched=launched)
        self.study = design.create_study(cfg["study_name"], storage, cfg["seed"],
                                          {k: getattr(baseline, k) for k in space})
        settings = {"folds": cfg["folds"], "epochs": cfg["epochs"], "seed": cfg["seed"],
                     "data_digest": train_split.digest, "search_space": space}
        previous = self.study.user_attrs.get("settings")
        if previous is None:
            self.study.set_user_attr("settings", settings)
        elif previous != settings:
            changed = ", ".join(f"{k}={previous[k]!r}" for k in settings if previous.get(k) != settings[k])
            raise ConfigError(f"study {cfg['study_name']!r} was run with {changed}: rerun it with the same "
                              "settings, or start a new study with another --study-name")
        self.folds = folds.fold_indices(train_split.labels, cfg["folds"], cfg["seed"])
        self.runner = runner  # a folds.FoldRunner
        self.params = {"study_name": cfg["study_name"], "storage": storage_label, "folds": cfg["folds"],
                       "sampler": "TPESampler(multivariate, constant_liar, seed)",
                       "pruner": "WilcoxonPruner(p_threshold=0.1)", "search_space": str(space)}

    # -- the parent run ------------------------------------------------------------------------
    def open_parent(self) -> None:
        """Find the study's parent run, or create it; call it holding the study's lock, so that
        sweeps started at the same instant make one parent between them."""
        run_id = self.study.user_attrs.get("mlflow_parent_run_id")
        if run_id is None or not self._run_exists(run_id):
            tags = {"legoexp.kind": "sweep", "legoexp.study": self.cfg["study_name"]}
            if self.launched_run:
                run_id = self.launched_run
                tracking.set_tags(run_id, {"mlflow.runName": self.cfg["study_name"], **tags})
            else:
                run_id = self.client.create_run(self.experiment_id, run_name=self.cfg["study_name"],
                                                tags=tags).info.run_id
            tracking.log_params(run_id, {**self.params, **tracking.provenance(self.cfg["data"], self.source,
                                                                              self.train_split)})
            self.study.set_user_attr("mlflow_parent_run_id", run_id)  # last: a parent with its params
        self._set_parent(run_id)

    def _set_parent(self, run_id: str) -> None:
        self.parent_id = run_id
        self.parent_url = tracking.run_url(self.experiment_id, run_id)

    @contextlib.contextmanager
    def parent_run(self):
        """The parent run is RUNNING while this process works on the study, and ends with it."""
        run_id = self.parent_id
        self.client.update_run(run_id, status="RUNNING")
        orphans = claims.fail_orphans(self.study, self.watch, self._kill_trial_run)
        if orphans:
            print(f"marked {orphans} trial(s) of a dead process as failed", file=sys.stderr)
        try:
            yield self
        except KeyboardInterrupt:
            self.client.set_terminated(run_id, "KILLED")
            done = design.count_finished(self.study)
            print(f"\ninterrupted with {done} finished trial(s); rerun the same command to resume",
                  file=sys.stderr)
            raise
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        finally:
            self.runner.close()
        self.client.set_terminated(run_id, "FINISHED")

    def join(self, parent_id: str | None) -> None:
        """A worker: log trials under the study's parent run, which a main sweep creates; one started
        before the main sweep waits for it (up to ``--wait`` seconds)."""
        wait = self.cfg["wait"]
        deadline, said = time.monotonic() + wait, False
        while not (parent_id or self.study.user_attrs.get("mlflow_parent_run_id")):
            if time.monotonic() > deadline:
                raise UserError(f"study {self.cfg['study_name']!r} has no parent run after {wait} s: start the main "
                                "`python -m legoexp.sweep` (without --worker) too")
            if not said:
                print(f"waiting up to {wait} s for a main sweep to create the parent run of study "
                      f"{self.cfg['study_name']!r}", file=sys.stderr)
                said = True
            time.sleep(1)  # the study's user attributes are read from the storage each time
        parent_id = parent_id or self.study.user_attrs["mlflow_parent_run_id"]
        if not self._run_exists(parent_id):
            raise UserError(f"the parent run {parent_id} of study {self.cfg['study_name']!r} does not exist "
                            f"in {mlflow.get_tracking_uri()}: is MLFLOW_TRACKING_URI the main sweep's?")
        self._set_parent(parent_id)

    def _run_exists(self, run_id) -> bool:
        """False for a run that does not exist or was deleted; a store that fails raises."""
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except mlflow.exceptions.MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise

    def _kill_trial_run(self, trial, reason: str) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and self._run_exists(run_id):
            tracking.set_tags(run_id, {"state": "failed", "fail_reason": reason})
            self.client.set_terminated(run_id, "KILLED")

    # -- the search ----------------------------------------------------------------------------
    def run(self, jobs: int = 1, worker_args: list[str] | None = None, quiet: bool = False) -> None:
        """Reach ``trials`` finished trials: here, or in ``jobs`` worker processes watched from here."""
        shown = progress.Trials(self.cfg["trials"], self.study.get_trials(deepcopy=False), quiet)
        try:
            if jobs > 1:  # they stop claiming at this command's deadline too
                deadline = ["--deadline", repr(self.deadline)] if math.isfinite(self.deadline) else []
                workers.run_workers(jobs, [*worker_args, *deadline], self.parent_id, lambda: self._progress(shown))
            # after workers too: what a dead worker left undone is redone here; trials that workers
            # elsewhere still run are waited for
            while design.count_finished(self.study) < self.cfg["trials"] and time.time() < self.deadline:
                if not self.work(on_trial=lambda: self._progress(shown)):
                    break
                if design.count_finished(self.study) < self.cfg["trials"]:
                    time.sleep(2)
                    self._progress(shown)
            self._end_stray_runs()
        finally:
            shown.close()
        done = design.count_finished(self.study)
        if done < self.cfg["trials"] and time.time() >= self.deadline:
            print(f"stopped at the time limit (--timeout {self.cfg['timeout']:g} s): {done} of {self.cfg['trials']} "
                  "trials finished; rerun the same command to go on", file=sys.stderr)

    def _end_stray_runs(self) -> None:
        """End, as their trial ended, the trial runs still RUNNING whose trial has ended: their process
        was killed between telling Optuna and ending the run, or could not reach the tracking store."""
        ended = {str(t.number): t for t in self.study.get_trials(deepcopy=False) if t.state != TrialState.RUNNING}
        runs = self.client.search_runs([self.experiment_id], f"tags.`legoexp.study` = '{self.cfg['study_name']}' "
                                       "and tags.`legoexp.kind` = 'trial' and attributes.status = 'RUNNING'")
        for run in runs:
            trial = ended.get(run.data.tags.get("trial_number"))
            if trial is None:
                continue
            if trial.user_attrs.get("mlflow_run_id") == run.info.run_id and trial.state != TrialState.FAIL:
                accuracies = [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)]
                self._end_trial(run.info.run_id, accuracies, trial.state)
            else:  # failed, or a run its process made but never linked to the trial before it died
                reason = trial.user_attrs.get("fail_reason", "its process could not end it")
                self._end_trial(run.info.run_id, [], TrialState.FAIL, reason, status="KILLED")

    def work(self, on_trial=None) -> bool:
        """Claim and run trials while the study needs more; False if it gave up (time, failures).

        The next trial is claimed and its folds handed to the fold runner before the current one's
        last folds are in, so the workers never wait for this process's bookkeeping between trials.
        It is claimed at the same step whatever the timing (the current trial is RUNNING, the one
        before it told), so a seed gives the same study."""
        failures, current = 0, None
        while True:
            stopping = failures > self.cfg["trials"] or time.time() >= self.deadline
            trial = None if stopping else self._claim()
            try:
                upcoming = self._start_trial(trial) if trial is not None else None
            except BaseException as e:  # what ends this process ends the trial it was running too
                if current is not None:
                    self._abandon_trial(current, e)
                raise
            if current is not None:
                try:
                    failures += self._finish_trial(current) == TrialState.FAIL
                except BaseException as e:
                    if upcoming is not None:
                        self._abandon_trial(upcoming, e)
                    raise
                if on_trial:
                    on_trial()
            if upcoming is None:
                break
            current = upcoming
        if failures > self.cfg["trials"]:
            print(f"stopped: {failures} trials failed in this process", file=sys.stderr)
        return not stopping

    def _claim(self):
        """A new trial, unless finished + running trials already make the target; under the study's
        lock, so that processes sharing the study never start more trials than ``--trials`` asks for."""
        trial = None
        try:
            with self.lock():
                claims.fail_orphans(self.study, self.watch, self._kill_trial_run, claims_locked=True)
                active = self.study.get_trials(deepcopy=False, states=design.FINISHED + (TrialState.RUNNING,))
                if len(active) < self.cfg["trials"]:
                    trial = self.study.ask()
                    trial.set_user_attr("owner", claims.OWNER)
        except LockLost:  # cut off while claiming: another process may have claimed the same slot
            if trial is not None:
                with contextlib.suppress(Exception):
                    trial.set_user_attr("fail_reason", "claimed while this process had lost the study's lock")
                    self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            return self._claim()
        return trial

    def _progress(self, shown: progress.Trials) -> None:
        shown.update(self.study.get_trials(deepcopy=False))

    def _start_trial(self, trial: optuna.Trial) -> "_Running":
        """Hand a claimed trial's folds to the fold runner, then make its MLflow child run while they train."""
        faults.point("trial.claimed")
        config = sweep_config(self.cfg, design.suggest(trial, self.space))
        running = _Running(trial)
        try:
            running.fold_results = self.runner.accuracies(config, self.folds)
            running.heartbeat.enter_context(claims.Heartbeat(self.storage, trial._trial_id, self.cfg["heartbeat"]))
            running.run_id = self.client.create_run(
                self.experiment_id, run_name=f"trial-{trial.number:03d}",
                tags={"mlflow.parentRunId": self.parent_id, "legoexp.kind": "trial", "legoexp.study":
                      self.cfg["study_name"], "trial_number": str(trial.number), "state": "running"}).info.run_id
            trial.set_user_attr("mlflow_run_id", running.run_id)
            trial.set_user_attr("mlflow_run_url", tracking.run_url(self.experiment_id, running.run_id))  # shown by optuna-dashboard
            tracking.log_params(running.run_id, {
                **tracking.run_params(config, self.cfg["data"], self.source, self.train_split),
                "trial_number": trial.number, "folds": self.cfg["folds"]})
        except BaseException as e:
            self._abandon_trial(running, e)
            raise
        return running

    def _finish_trial(self, running: "_Running") -> TrialState | None:
        """Score a started trial, tell Optuna how it ended, then end its run the same way. None when
        the trial was taken from this process meanwhile (its heartbeat was silent too long: stopped,
        or cut off from the storage) and failed by another: its result is dropped, so nothing is
        counted twice."""
        trial, run_id, accuracies = running.trial, running.run_id, running.accuracies
        state, reason = TrialState.COMPLETE, None
        try:
            with running.heartbeat:
                try:
                    self._score(trial, running.fold_results, accuracies)
                except optuna.TrialPruned:
                    state = TrialState.PRUNED
                except Diverged as e:
                    state, reason = TrialState.FAIL, str(e)
                    trial.set_user_attr("fail_reason", reason)
                value = float(np.mean(accuracies)) if state == TrialState.COMPLETE else None
                taken = self.study.tell(trial, value, state=state, skip_if_finished=True).state != state
        except UpdateFinishedTrialError:
            taken = True
        except BaseException as e:
            if not isinstance(e, KeyboardInterrupt) and self._taken(trial):  # e.g. a storage call cut off while the trial was failed
                taken = True
            else:
                self._abandon_trial(running, e)
                raise
        if taken:
            reason = "its trial was failed by another process while this one was silent; its result is dropped"
            self._end_trial(run_id, accuracies, TrialState.FAIL, reason, status="KILLED")
            print(f"trial {trial.number}: {reason}", file=sys.stderr)
            return None
        faults.point("trial.told")
        self._end_trial(run_id, accuracies, state, reason)
        return state

    def _abandon_trial(self, running: "_Running", error: BaseException) -> None:
        """A started trial this process will not finish, because of ``error``: KILLED if it is a
        KeyboardInterrupt, else FAILED. Best effort: the store may be what failed; a trial left
        RUNNING is failed later by the watchers, its owner being gone."""
        interrupted = isinstance(error, KeyboardInterrupt)
        if running.fold_results is not None:
            running.fold_results.close()
        running.heartbeat.close()
        with contextlib.suppress(Exception):
            if running.run_id is not None:
                self._end_trial(running.run_id, running.accuracies, TrialState.FAIL,
                                "interrupted" if interrupted else f"{type(error).__name__}: {error}",
                                status="KILLED" if interrupted else "FAILED")
            self.study.tell(running.trial, state=TrialState.FAIL, skip_if_finished=True)

    def _taken(self, trial) -> bool:
        """True if another process has ended ``trial`` (the storage says so when it can be asked)."""
        try:
            return self.storage.get_trial(trial._trial_id).state != TrialState.RUNNING
        except Exception:
            return False

    def _score(self, trial: optuna.Trial, fold_results, accuracies: list[float]) -> None:
        """Take each fold's accuracy from ``fold_results``, append it and report it to the pruner."""
        with contextlib.closing(fold_results):
            for k, accuracy in enumerate(fold_results):
                accuracies.append(accuracy)
                trial.report(accuracy, k)
                prune = trial.should_prune()
                faults.point("trial.fold")
                if prune:
                    raise optuna.TrialPruned(f"pruned after fold {k + 1}")

    def _end_trial(self, run_id, accuracies, state: TrialState, reason=None, status=None) -> None:
        """The folds' accuracies and the outcome (tags ``state``, ``fail_reason``) in one batch, then
        the run's status: FINISHED for a complete or pruned trial, else ``status`` (default FAILED)."""
        metrics = {f"val_accuracy_fold{k}": a for k, a in enumerate(accuracies)}
        if state == TrialState.COMPLETE:
            metrics["val_accuracy"] = float(np.mean(accuracies))
        outcome = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(state, "failed")
        tracking.log_metrics(run_id, metrics, tags={"state": outcome} | ({"fail_reason": reason} if reason else {}))
        self.client.set_terminated(run_id, "FINISHED" if outcome != "failed" else status or "FAILED")


class _Running:
    """A claimed trial between its start and its end: its folds' results to come, its run, its heartbeat."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.fold_results = None
        self.run_id: str | None = None
        self.accuracies: list[float] = []
        self.heartbeat = contextlib.ExitStack()
