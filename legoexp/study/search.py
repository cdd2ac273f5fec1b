"""The search driver: one process's share of a study, from the first claim to the last trial told.

``Search`` loads or makes the study (refusing one run with other settings), opens or joins its
parent run (``study.parent``), and reaches ``--trials`` finished trials: it claims a trial under
the study's lock, starts it (``study.trial``: its folds go to the fold processes, its MLflow run is
made while they train) and claims the next one before the current one's folds are in, so the fold
processes never wait for this process's bookkeeping. It watches for trials whose process died
(``study.claims``), stops claiming at the command's deadline, and with ``--jobs`` runs the search
in worker processes instead (``study.workers``). What follows the search is ``comparison.report``'s.
"""

import contextlib
import math
import os
import sys
import time
import warnings

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from legoexp import tracking
from legoexp.config import TrainConfig
from legoexp.errors import ConfigError
from legoexp.study import claims, design, folds, progress, workers
from legoexp.study.parent import ParentRun
from legoexp.study.storage import LockLost
from legoexp.study.trial import Trials

optuna.logging.set_verbosity(optuna.logging.WARNING)
# WilcoxonPruner and the matplotlib plots are marked experimental; the warnings say nothing to a user
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class Search:
    def __init__(self, cfg, space, baseline: TrainConfig, source, train_split, storage, storage_label, lock, runner,
                 deadline: float = math.inf):
        """Load or create the study; call it holding ``lock``, the study's lock (``storage.StudyLock``).
        ``deadline``: the ``time.time()`` after which no trial is claimed (the command's ``--timeout``)."""
        self.cfg, self.space, self.storage, self.lock, self.runner = cfg, space, storage, lock, runner
        self.deadline = deadline
        self.watch = claims.Watch(cfg["heartbeat"])
        launched = os.environ.get("MLFLOW_RUN_ID")  # `mlflow run` made a run: it becomes the parent
        experiment_id = tracking.experiment_id(cfg["experiment_name"], launched=launched)
        self.study = design.create_study(cfg["study_name"], storage, cfg["seed"],
                                         {k: getattr(baseline, k) for k in space}, cfg["objectives"])
        settings = {"folds": cfg["folds"], "epochs": cfg["epochs"], "seed": cfg["seed"],
                    "data_digest": train_split.digest, "search_space": space}
        if design.is_multi(cfg["objectives"]):  # only then: studies made before objectives existed still match
            settings["objectives"] = cfg["objectives"]
        previous = self.study.user_attrs.get("settings")
        if previous is None:
            self.study.set_user_attr("settings", settings)
        elif previous != settings:
            changed = ", ".join(f"{k}={previous.get(k)!r}" for k in {**previous, **settings}
                                if previous.get(k) != settings.get(k))
            raise ConfigError(f"study {cfg['study_name']!r} was run with {changed}: rerun it with the same "
                              "settings, or start a new study with another --study-name")
        self.parent = ParentRun(MlflowClient(), self.study, experiment_id, launched)
        self.provenance = tracking.provenance(cfg["data"], source, train_split)
        self.params = {"study_name": cfg["study_name"], "storage": storage_label, "folds": cfg["folds"],
                       "sampler": "TPESampler(multivariate, constant_liar, seed)",
                       "pruner": "none (multi-objective)" if design.is_multi(cfg["objectives"])
                       else "WilcoxonPruner(p_threshold=0.1)", "search_space": str(space),
                       "objectives": cfg["objectives"],
                       **self.provenance}
        self.folds = folds.fold_indices(train_split.labels, cfg["folds"], cfg["seed"])
        self.trials: Trials | None = None  # once the parent run is known

    def open_parent(self) -> None:
        """A main sweep's: find or make the parent run (holding the study's lock)."""
        self._under(self.parent.open(self.params))

    def join(self, parent_id: str | None) -> None:
        """A worker's: log trials under the study's parent run, once a main sweep has made it."""
        self._under(self.parent.join(parent_id, self.cfg["wait"]))

    def _under(self, parent_id: str) -> None:
        self.trials = Trials(self.study, self.storage, self.space, self.cfg, self.runner, self.folds, parent_id,
                             self.parent.experiment_id, self.provenance)

    @contextlib.contextmanager
    def parent_run(self):
        """The parent run is RUNNING while this process works on the study; trials of dead processes
        are failed first."""
        with self.parent.running(lambda: design.count_finished(self.study)):
            orphans = claims.fail_orphans(self.study, self.watch, self.trials.kill_run)
            if orphans:
                print(f"marked {orphans} trial(s) of a dead process as failed", file=sys.stderr)
            yield self

    def run(self, jobs: int = 1, worker_args: list[str] | None = None, quiet: bool = False) -> None:
        """Reach ``trials`` finished trials: here, or in ``jobs`` worker processes watched from here."""
        shown = progress.Trials(self.cfg["trials"], self.study.get_trials(deepcopy=False), quiet)
        try:
            if jobs > 1:  # they stop claiming at this command's deadline too (worker_command)
                workers.run_workers(jobs, worker_args, self.parent.run_id, lambda: self._progress(shown))
            # after workers too: what a dead worker left undone is redone here; trials that workers
            # elsewhere still run are waited for
            while design.count_finished(self.study) < self.cfg["trials"] and time.time() < self.deadline:
                if not self.work(on_trial=lambda: self._progress(shown)):
                    break
                if design.count_finished(self.study) < self.cfg["trials"]:
                    time.sleep(2)
                    self._progress(shown)
            self.trials.end_stray_runs()
        finally:
            shown.close()
        done = design.count_finished(self.study)
        if done < self.cfg["trials"] and time.time() >= self.deadline:
            print(f"stopped at the time limit (--timeout {self.cfg['timeout']:g} s): {done} of {self.cfg['trials']} "
                  "trials finished; rerun the same command to go on", file=sys.stderr)

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
                upcoming = self.trials.start(trial) if trial is not None else None
            except BaseException as e:  # what ends this process ends the trial it was running too
                if current is not None:
                    self.trials.abandon(current, e)
                raise
            if current is not None:
                try:
                    failures += self.trials.finish(current) == TrialState.FAIL
                except BaseException as e:
                    if upcoming is not None:
                        self.trials.abandon(upcoming, e)
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
                claims.fail_orphans(self.study, self.watch, self.trials.kill_run, claims_locked=True)
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
