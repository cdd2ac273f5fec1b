"""Re-scoring a study's candidates on fresh folds of the training split, and the rule's pick.

Every candidate is cross-validated again, ``repeats`` times, on stratified k-folds of the training
split with fresh seeds (repeat r: fold seed and training seed ``seed + 1 + r``; the search used
``seed``), the same folds for every candidate, so their scores pair up. The folds go to the sweep's
fold workers all at once (``FoldRunner.start_folds``) and train while the study's figures are drawn.
The candidates' latency is measured here first, while the workers are idle. All of it is logged as the
study's ``rescoring`` run (per candidate: the accuracy of every (repeat, fold) as a metric history,
the mean and its CI, the latency), which a rerun reuses: a study is re-scored once per candidate set.
The test split is not read.
"""

import functools
import sys
from dataclasses import replace

from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from legoexp import tracking
from legoexp.config import sweep_config
from legoexp.ops import faults, timings
from legoexp.selection import latency, rules
from legoexp.study import design
from legoexp.study.folds import fold_indices

_client = functools.cache(MlflowClient)


class Pending:
    """A study's re-scoring, handed to the fold workers (or found logged): ``finish`` gives the Choice."""

    def __init__(self, study, cfg: dict, train_split, runner, parent_id: str, experiment_id: str):
        self.study, self.cfg, self.parent_id, self.experiment_id = study, cfg, parent_id, experiment_id
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        front = study.best_trials if design.is_multi(cfg["objectives"]) and cfg["select"] != "best" else None
        self.found = rules.candidates(complete, cfg["select"], cfg["top_k"], front)
        self.seeds = [cfg["seed"] + 1 + r for r in range(cfg["repeats"])]
        self.params = {"candidates": ",".join(str(c.number) for c in self.found), "repeats": cfg["repeats"],
                       "folds": cfg["folds"], "seeds": ",".join(map(str, self.seeds)),
                       "epochs": cfg["epochs"], "data_digest": train_split.digest}
        self.logged = self._logged()
        self.wait = None
        self.measured: dict = {}
        if self.logged is None:
            # timed now, while the fold processes are idle: the search is over, nothing handed out yet
            self.measured = {c.number: latency.measure(c.params["hidden1"], c.params["hidden2"]) for c in self.found}
            jobs = []
            for seed in self.seeds:
                for fit_idx, val_idx in fold_indices(train_split.labels, cfg["folds"], seed):
                    jobs += [(replace(sweep_config(cfg, c.params), seed=seed), fit_idx, val_idx) for c in self.found]
            self.wait = runner.start_folds(jobs)
            print(f"re-scoring {len(self.found)} candidate(s) ({self.params['candidates']}) with {cfg['repeats']}x"
                  f"{cfg['folds']}-fold CV of the training split, seeds {self.params['seeds']}", file=sys.stderr)

    @property
    def known(self) -> rules.Candidate | None:
        """The pick, when the rule needs no re-scores to make it (``best``: its one candidate)."""
        return self.found[0] if self.cfg["select"] == "best" else None

    def finish(self) -> rules.Choice:
        """The rule's pick, on the re-scores (waited for, then logged) or on those a run logged before."""
        if self.logged is not None:
            scores, measured = self._read(self.logged)
        else:
            accuracies = self.wait()
            n = len(self.found)
            scores = {c.number: accuracies[i::n] for i, c in enumerate(self.found)}
            measured = self.measured
        choice = rules.pick(self.cfg["select"], self.found, scores, self.cfg["folds"], self.cfg["tolerance"])
        if self.logged is None:
            self._log(choice, measured)
            timings.lap("selection")
        return replace(choice, latency=measured)

    def _runs(self, where: str) -> list:
        return _client().search_runs([self.experiment_id], f"tags.`legoexp.study` = '{self.study.study_name}' and "
                                     f"tags.`legoexp.kind` = 'rescoring' and {where}")

    def _logged(self):
        """This study's finished re-scoring of the same candidates, folds, seeds and data, or None."""
        where = " and ".join(f"params.{k} = '{v}'" for k, v in self.params.items())
        runs = self._runs(f"attributes.status = 'FINISHED' and {where}")
        return runs[0] if runs else None

    def _read(self, run) -> tuple[dict, dict]:
        scores = {c.number: [m.value for m in sorted(_client().get_metric_history(run.info.run_id, f"cv_trial{c.number}"),
                                                     key=lambda m: m.step)] for c in self.found}
        measured = {c.number: {k: run.data.metrics[f"{k}_trial{c.number}"] for k in
                               ("latency_batch1_ms", "latency_batch100_ms") if f"{k}_trial{c.number}" in run.data.metrics}
                    for c in self.found}
        return scores, measured

    def _log(self, choice: rules.Choice, measured: dict) -> None:
        """The ``rescoring`` run (a child of the parent; a RUNNING one a killed process left is ended), and
        the candidates' trial runs tagged, with their latency."""
        for run in self._runs("attributes.status = 'RUNNING'"):
            _client().set_terminated(run.info.run_id, "KILLED")
        where = latency.machine()
        run_id = _client().create_run(self.experiment_id, run_name="rescoring", tags={
            "mlflow.parentRunId": self.parent_id, "legoexp.kind": "rescoring", "legoexp.study": self.study.study_name,
            "latency_machine": where}).info.run_id
        try:
            faults.point("rescore.logging")
            tracking.log_params(run_id, self.params)
            tracking.log_history(run_id, {f"cv_trial{c.number}": choice.scores[c.number] for c in self.found},
                                 steps=list(range(len(choice.scores[self.found[0].number]))))
            metrics = {}
            for c in self.found:
                mean, lo, hi = choice.rescored(c)
                metrics |= {f"rescored_cv_trial{c.number}": mean, f"rescored_cv_ci_low_trial{c.number}": lo,
                            f"rescored_cv_ci_high_trial{c.number}": hi}
                metrics |= {f"{k}_trial{c.number}": v for k, v in measured[c.number].items()}
            tracking.log_metrics(run_id, metrics)
            trial_runs = {t.number: t.user_attrs.get("mlflow_run_id") for t in self.study.get_trials(deepcopy=False)}
            for c in self.found:
                if trial_runs.get(c.number):
                    tracking.log_metrics(trial_runs[c.number], {**measured[c.number],
                                                                "rescored_cv": choice.rescored(c)[0]},
                                         tags={"candidate": "true", "latency_machine": where})
        except BaseException as e:
            _client().set_terminated(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
        _client().set_terminated(run_id, "FINISHED")
