"""The study's parent MLflow run: found or made once per study, RUNNING while a sweep works on it.

Every sweep process of a study logs its trials under one parent run, whose id the study keeps
(user attribute ``mlflow_parent_run_id``). A main sweep finds it or makes it (under ``mlflow run``
it is the run that MLflow Projects made); a ``--worker`` waits for a main sweep to make it. Runs
are made with ``MlflowClient``, not the fluent API, so nothing depends on which run is "active" in
which process.
"""

import contextlib
import sys
import time

import mlflow
import optuna
from mlflow.tracking import MlflowClient

from legoexp import tracking
from legoexp.errors import UserError
from legoexp.ops.command import Terminated


class ParentRun:
    def __init__(self, client: MlflowClient, study: optuna.Study, experiment_id: str, launched: str | None):
        """``launched``: the run that ``mlflow run`` made, which becomes the parent."""
        self.client, self.study, self.experiment_id, self.launched = client, study, experiment_id, launched
        self.run_id: str | None = None

    @property
    def url(self) -> str:
        return tracking.run_url(self.experiment_id, self.run_id)

    def open(self, params: dict) -> str:
        """Find the study's parent run, or make it with ``params``; call it holding the study's lock, so
        that sweeps started at the same instant make one parent between them."""
        run_id = self.study.user_attrs.get("mlflow_parent_run_id")
        if run_id is None or not tracking.run_exists(run_id):
            name = self.study.study_name
            tags = {"legoexp.kind": "sweep", "legoexp.study": name}
            if self.launched:
                run_id = self.launched
                tracking.set_tags(run_id, {"mlflow.runName": name, **tags})
            else:
                run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            tracking.log_params(run_id, params)
            self.study.set_user_attr("mlflow_parent_run_id", run_id)  # last: a parent with its params
        self.run_id = run_id
        return run_id

    def join(self, run_id: str | None, wait: int) -> str:
        """A worker's: the study's parent run (``run_id`` if given), which a main sweep makes; one started
        before the main sweep waits for it, up to ``wait`` seconds."""
        name = self.study.study_name
        deadline, said = time.monotonic() + wait, False
        while not (run_id or self.study.user_attrs.get("mlflow_parent_run_id")):
            if time.monotonic() > deadline:
                raise UserError(f"study {name!r} has no parent run after {wait} s: start the main "
                                "`python -m legoexp.sweep` (without --worker) too")
            if not said:
                print(f"waiting up to {wait} s for a main sweep to create the parent run of study {name!r}",
                      file=sys.stderr)
                said = True
            time.sleep(1)  # the study's user attributes are read from the storage each time
        run_id = run_id or self.study.user_attrs["mlflow_parent_run_id"]
        if not tracking.run_exists(run_id):
            raise UserError(f"the parent run {run_id} of study {name!r} does not exist in "
                            f"{mlflow.get_tracking_uri()}: is MLFLOW_TRACKING_URI the main sweep's?")
        self.run_id = run_id
        return run_id

    @contextlib.contextmanager
    def running(self, finished_trials):
        """The parent run is RUNNING while this process works on the study, and ends as the work does:
        FINISHED, KILLED on Ctrl-C (saying how many trials ``finished_trials()`` counts), else FAILED."""
        self.client.update_run(self.run_id, status="RUNNING")
        try:
            yield self
        except KeyboardInterrupt as e:
            self.client.set_terminated(self.run_id, "KILLED")
            how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
            print(f"{how} with {finished_trials()} finished trial(s); rerun the same command to resume",
                  file=sys.stderr)
            e.reported = True
            raise
        except BaseException:
            self.client.set_terminated(self.run_id, "FAILED")
            raise
        self.client.set_terminated(self.run_id, "FINISHED")
