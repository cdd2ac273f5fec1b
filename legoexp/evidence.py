"""The evidence promotion rests on: a paired multi-seed comparison of two registered versions.

``find_evidence`` looks for a finished ``comparison`` run of exactly the two versions'
configurations on their data digest with the same seeds (a sweep's own, or an earlier
promotion's) and recomputes its result from the per-seed test accuracies; ``run_comparison``
trains both with the sweep's code when there is none, and logs it. Neither touches the registry.
"""

import itertools
import sys
from dataclasses import dataclass

from legoexp.errors import DataError

CONFIG_KEYS = {"hidden1": int, "hidden2": int, "lr": float, "batch_size": int, "epochs": int}


@dataclass(frozen=True)
class Version:
    number: str
    role: str  # the alias it was found by (or its aliases), or "version"
    tags: dict

    @property
    def config(self) -> tuple:
        return config_of(self.tags, "")

    def __str__(self) -> str:
        return f"version {self.number}" + (f" (@{self.role})" if self.role != "version" else "")


def config_of(values: dict, prefix: str) -> tuple | None:
    try:
        return tuple(kind(values[prefix + key]) for key, kind in CONFIG_KEYS.items())
    except (KeyError, ValueError):
        return None


def seeds_text(seeds) -> str:
    return ",".join(map(str, seeds))


def find_evidence(client, champion: Version, candidate: Version, seeds: list[int]):
    """The newest finished comparison run of exactly these two configurations on their data digest
    with these seeds, and its PairedResult recomputed from the per-seed test accuracies; or None."""
    from legoexp.stats import paired_comparison

    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.`legoexp.kind` = 'comparison' and attributes.status = 'FINISHED' "
                              f"and params.data_digest = '{candidate.tags['data_digest']}'",
                              order_by=["attributes.start_time DESC"])
    for run in runs:
        params = run.data.params
        if sorted(params.get("seeds", "").split(",")) != sorted(map(str, seeds)):
            continue
        arms = {key[:-len("_hidden1")]: config_of(params, key[:-len("hidden1")]) for key in params
                if key.endswith("_hidden1")}  # baseline/best in a sweep's comparison, champion/candidate here
        for a, b in itertools.permutations(arms, 2):
            if (arms[a], arms[b]) == (champion.config, candidate.config):
                scores = [_per_seed(client, run.info.run_id, arm, seeds) for arm in (a, b)]
                if None not in scores:
                    return run.info.run_id, paired_comparison(*scores)
    return None


def _per_seed(client, run_id: str, arm: str, seeds: list[int]) -> list[float] | None:
    history = {m.step: m.value for m in client.get_metric_history(run_id, f"{arm}_test_accuracy")}
    return [history[s] for s in seeds] if set(history) == set(seeds) else None


def run_comparison(client, name: str, champion: Version, candidate: Version, seeds: list[int], args,
                   launched: str | None):
    """Train both configurations with ``seeds`` as the sweep does, log a ``comparison`` run (a child
    of the ``launched`` run under ``mlflow run``)."""
    from legoexp.data import load_split, open_source

    spec = args.data or candidate.tags["data"]
    try:
        source = open_source(spec)
        train_split = load_split(source, "train")
        test_split = load_split(source, "test")
    except DataError as e:
        hint = "" if args.data else f" (the data tag of {candidate}; pass --data if the data moved)"
        raise DataError(f"{e}{hint}") from None
    if train_split.digest != candidate.tags["data_digest"]:
        raise DataError(f"data={spec!r}: its training split has digest {train_split.digest}, but the versions "
                        f"were trained on data_digest {candidate.tags['data_digest']}; pass --data with that data")
    import mlflow

    from legoexp import plots, tracking
    from legoexp.compare import run_arm, summary_metrics
    from legoexp.stats import paired_comparison
    from legoexp.train import TrainConfig

    print(f"no comparison of these two yet: training both over seeds {seeds_text(seeds)} on the test split",
          file=sys.stderr)
    arms = [run_arm(role, TrainConfig(**dict(zip(CONFIG_KEYS, v.config))), seeds, train_split, test_split,
                    progress=lambda line: print("  " + line, file=sys.stderr))
            for role, v in (("champion", champion), ("candidate", candidate))]
    result = paired_comparison(arms[0].accuracies, arms[1].accuracies)

    if launched:
        experiment_id = client.get_run(launched).info.experiment_id
    else:  # not mlflow.set_experiment: no process-wide state changes behind a caller's back
        experiment = client.get_experiment_by_name(args.experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(args.experiment_name)
    tags = {"legoexp.kind": "comparison", "model_name": name, "candidate_version": candidate.number,
            "champion_version": champion.number, "champion_alias": champion.role, "test": result.test,
            "verdict": result.verdict("champion", "candidate")} | ({"mlflow.parentRunId": launched} if launched else {})
    run_id = client.create_run(experiment_id, run_name=f"comparison-v{candidate.number}-vs-v{champion.number}",
                               tags=tags).info.run_id
    try:
        params = {"seeds": seeds_text(seeds), "data_digest": train_split.digest, "test_digest": test_split.digest}
        for arm in arms:
            params |= {f"{arm.name}_{k}": v for k, v in arm.config.as_params().items() if k != "seed"}
        tracking.log_params(run_id, params)
        tracking.log_metrics(run_id, summary_metrics(result, "champion", "candidate"))
        for i, seed in enumerate(seeds):  # step = the seed itself, whatever the seeds are
            tracking.log_metrics(run_id, {f"{arm.name}_test_accuracy": arm.accuracies[i] for arm in arms}, step=seed)
        with mlflow.start_run(run_id=run_id):
            tracking.log_figures({"seed_comparison": plots.seed_comparison(
                arms[0].accuracies, arms[1].accuracies, "champion", "candidate", result=result)})
    except BaseException as e:
        client.set_terminated(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id, result
