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
from optuna.trial import TrialState
from tqdm import tqdm

from legoexp import cv, tracking, workers
from legoexp import study as studies
from legoexp.errors import ConfigError, UserError
from legoexp.train import Diverged, TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)
# WilcoxonPruner and the matplotlib plots are marked experimental; the warnings say nothing to a user
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class Search:
    def __init__(self, cfg, space, baseline: TrainConfig, source, train_split, storage, storage_label, runner):
        self.cfg, self.space, self.baseline = cfg, space, baseline
        self.source, self.train_split, self.storage = source, train_split, storage
        self.client = MlflowClient()
        launched = os.environ.get("MLFLOW_RUN_ID")  # `mlflow run` made a run: it becomes the parent
        self.launched_run = launched
        self.experiment_id = (self.client.get_run(launched).info.experiment_id if launched else
                              mlflow.get_experiment_by_name(cfg["experiment_name"]).experiment_id)
        self.study = studies.create_study(cfg["study_name"], storage, cfg["seed"],
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
        self.folds = cv.fold_indices(train_split.labels, cfg["folds"], cfg["seed"])
        self.runner = runner  # a cv.FoldRunner
        self.params = {"study_name": cfg["study_name"], "storage": storage_label, "folds": cfg["folds"],
                       "sampler": "TPESampler(multivariate, constant_liar, seed)",
                       "pruner": "WilcoxonPruner(p_threshold=0.1)", "search_space": str(space)}

    # -- the parent run ------------------------------------------------------------------------
    @contextlib.contextmanager
    def parent_run(self):
        run_id = self.study.user_attrs.get("mlflow_parent_run_id")
        if run_id is None or not self._run_exists(run_id):
            tags = {"legoexp.kind": "sweep", "legoexp.study": self.cfg["study_name"]}
            if self.launched_run:
                run_id = self.launched_run
                self.client.set_tag(run_id, "mlflow.runName", self.cfg["study_name"])
                for k, v in tags.items():
                    self.client.set_tag(run_id, k, v)
            else:
                run_id = self.client.create_run(self.experiment_id, run_name=self.cfg["study_name"],
                                                tags=tags).info.run_id
            self.study.set_user_attr("mlflow_parent_run_id", run_id)
            tracking.log_params(run_id, {**self.params, "data": self.cfg["data"],
                                         "data_source": self.source.uri, "data_digest": self.train_split.digest})
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.parent_id = run_id
        ui = mlflow.get_tracking_uri() if mlflow.get_tracking_uri().startswith("http") else "http://127.0.0.1:5000"
        self.parent_url = f"{ui.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"
        orphans = studies.fail_orphans(self.study, self.storage, self._kill_trial_run)
        if orphans:
            print(f"marked {orphans} trial(s) of a dead process as failed", file=sys.stderr)
        try:
            yield self
        except KeyboardInterrupt:
            self.client.set_terminated(run_id, "KILLED")
            done = studies.count_finished(self.study)
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
        """A worker: log trials under the study's parent run, which the main sweep created."""
        parent_id = parent_id or self.study.user_attrs.get("mlflow_parent_run_id")
        if not parent_id or not self._run_exists(parent_id):
            raise UserError(f"study {self.cfg['study_name']!r} has no parent run yet: start the main "
                            "`python -m legoexp.sweep` (without --worker) first")
        self.parent_id = parent_id

    def _run_exists(self, run_id) -> bool:
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except mlflow.exceptions.MlflowException:
            return False

    def _kill_trial_run(self, trial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and self._run_exists(run_id):
            self.client.set_tag(run_id, "state", "failed")
            self.client.set_tag(run_id, "fail_reason", "its process died")
            self.client.set_terminated(run_id, "KILLED")

    # -- the search ----------------------------------------------------------------------------
    def run(self, jobs: int = 1, worker_args: list[str] | None = None) -> None:
        """Reach ``trials`` finished trials: here, or in ``jobs`` worker processes watched from here."""
        bar = tqdm(total=self.cfg["trials"], desc="trials", unit="trial", file=sys.stderr,
                   dynamic_ncols=True, disable=None)
        try:
            if jobs > 1:
                workers.run_workers(jobs, worker_args, self.parent_id, lambda: self._progress(bar))
            # after workers too: what a dead worker left undone is redone here; trials that workers
            # elsewhere still run are waited for
            deadline = time.monotonic() + self.cfg["timeout"] if self.cfg["timeout"] else math.inf
            while studies.count_finished(self.study) < self.cfg["trials"] and time.monotonic() < deadline:
                if not self.work(on_trial=lambda: self._progress(bar)):
                    break
                if studies.count_finished(self.study) < self.cfg["trials"]:
                    time.sleep(2)
                    self._progress(bar)
            self._end_stray_runs()
        finally:
            bar.close()

    def _end_stray_runs(self) -> None:
        """End the trial runs still RUNNING whose trial has ended: the process that ran the trial
        could not reach the tracking store to end its run (e.g. while the database was down)."""
        ended = {str(t.number) for t in self.study.get_trials(deepcopy=False) if t.state != TrialState.RUNNING}
        runs = self.client.search_runs([self.experiment_id], f"tags.`legoexp.study` = '{self.cfg['study_name']}' "
                                       "and tags.`legoexp.kind` = 'trial' and attributes.status = 'RUNNING'")
        for run in runs:
            if run.data.tags.get("trial_number") in ended:
                tracking.set_tags(run.info.run_id, {"state": "failed", "fail_reason": "its process could not end it"})
                self.client.set_terminated(run.info.run_id, "KILLED")

    def work(self, on_trial=None) -> bool:
        """Claim and run trials while the study needs more; False if it gave up (time, failures)."""
        deadline = time.monotonic() + self.cfg["timeout"] if self.cfg["timeout"] else math.inf
        failures = 0
        while (trial := self._claim()) is not None:
            failures += self._run_trial(trial) == TrialState.FAIL
            if on_trial:
                on_trial()
            if failures > self.cfg["trials"]:
                print(f"stopped: {failures} trials failed in this process", file=sys.stderr)
                return False
            if time.monotonic() >= deadline:
                return False
        return True

    def _claim(self):
        """A new trial, unless finished + running trials already make the target; under a lock,
        so that workers sharing the study never start more trials than ``--trials`` asks for."""
        with studies.claim_lock(self.storage):
            studies.fail_orphans(self.study, self.storage, self._kill_trial_run, claims_locked=True)
            active = self.study.get_trials(deepcopy=False, states=studies.FINISHED + (TrialState.RUNNING,))
            if len(active) >= self.cfg["trials"]:
                return None
            trial = self.study.ask()
            trial.set_user_attr("owner", studies.OWNER)
            return trial

    def _run_trial(self, trial) -> TrialState:
        with studies.heartbeat(self.storage, trial):
            try:
                value = self._objective(trial)
            except optuna.TrialPruned:
                state, value = TrialState.PRUNED, None
            except Diverged:
                state, value = TrialState.FAIL, None
            except BaseException:
                self.study.tell(trial, state=TrialState.FAIL)
                raise
            else:
                state = TrialState.COMPLETE
        self.study.tell(trial, value, state=state)
        return state

    def _progress(self, bar) -> None:
        pruned = len(self.study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
        best = self._best_value()
        bar.n = min(studies.count_finished(self.study), bar.total)
        bar.set_postfix_str(f"pruned {pruned}, best val_accuracy {best:.4f}" if best is not None else
                            f"pruned {pruned}")

    def _best_value(self):
        try:
            return self.study.best_value
        except ValueError:
            return None

    def _objective(self, trial: optuna.Trial) -> float:
        point = studies.suggest(trial, self.space)
        config = TrainConfig(epochs=self.cfg["epochs"], seed=self.cfg["seed"], **point)
        fold_results = self.runner.accuracies(config, self.folds)  # the workers start now, while we log
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{trial.number:03d}",
            tags={"mlflow.parentRunId": self.parent_id, "legoexp.kind": "trial", "legoexp.study":
                  self.cfg["study_name"], "trial_number": str(trial.number), "state": "running"})
        run_id = run.info.run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        tracking.log_params(run_id, {**tracking.run_params(config, self.cfg["data"], self.source, self.train_split),
                                     "trial_number": trial.number, "folds": self.cfg["folds"]})
        accuracies = []
        try:
            with contextlib.closing(fold_results):
                for k, accuracy in enumerate(fold_results):
                    accuracies.append(accuracy)
                    trial.report(accuracy, k)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned after fold {k + 1}")
        except optuna.TrialPruned:
            self._end_trial(run_id, accuracies, "pruned", "FINISHED")
            raise
        except Diverged as e:
            trial.set_user_attr("fail_reason", str(e))
            self._end_trial(run_id, accuracies, "failed", "FAILED", reason=str(e))
            raise
        except KeyboardInterrupt:
            self._end_trial(run_id, accuracies, "failed", "KILLED", reason="interrupted")
            raise
        except Exception as e:
            self._end_trial(run_id, accuracies, "failed", "FAILED", reason=f"{type(e).__name__}: {e}")
            raise
        self._end_trial(run_id, accuracies, "complete", "FINISHED")
        return float(np.mean(accuracies))

    def _end_trial(self, run_id, accuracies, state, status, reason=None) -> None:
        """The folds' accuracies and the outcome (tags ``state``, ``fail_reason``) in one batch, then the status."""
        metrics = {f"val_accuracy_fold{k}": a for k, a in enumerate(accuracies)}
        if state == "complete":
            metrics["val_accuracy"] = float(np.mean(accuracies))
        tracking.log_metrics(run_id, metrics, tags={"state": state} | ({"fail_reason": reason} if reason else {}))
        self.client.set_terminated(run_id, status)
