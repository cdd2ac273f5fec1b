"""Comparison runs, the evidence behind registration and promotion: logged one way, read back one way.

A ``comparison`` run holds two configurations ("arms": baseline/best after a sweep,
champion/candidate for a promotion) trained with the same seeds and tested once:
``log_comparison`` writes it (the sweep's and promotion's alike), ``read_comparison`` gives its
seeds and arms back from params and per-seed metrics. ``find_evidence`` looks for a finished
run of exactly two versions' configurations on their data digest with the same seeds;
``run_comparison`` trains both with the sweep's code when there is none. Nothing here touches
the registry.
"""

import itertools
import sys
from dataclasses import dataclass

from legoexp.config import HYPERPARAMETERS, TrainConfig, read_config
from legoexp.errors import DataError

CONFIG_KEYS = tuple(key for key in HYPERPARAMETERS if key != "seed")  # an arm's config: the same for all its seeds


@dataclass(frozen=True)
class Version:
    number: str
    role: str  # the alias it was found by (or its aliases), or "version"
    tags: dict

    @property
    def config(self) -> dict | None:
        return config_of(self.tags, "")

    def __str__(self) -> str:
        return f"version {self.number}" + (f" (@{self.role})" if self.role != "version" else "")


def config_of(values: dict, prefix: str) -> dict | None:
    """An arm's config as logged with ``prefix`` (a comparison run's params, a version's tags), or None."""
    try:
        return read_config(values, prefix, CONFIG_KEYS)
    except (KeyError, ValueError):
        return None


def seeds_text(seeds) -> str:
    return ",".join(map(str, seeds))


def find_evidence(client, champion: Version, candidate: Version, seeds: list[int]):
    """The newest finished comparison run of exactly these two configurations on their data digest
    with these seeds, and its PairedResult recomputed from the per-seed test accuracies; or None."""
    from legoexp.comparison.stats import paired_comparison

    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.`legoexp.kind` = 'comparison' and attributes.status = 'FINISHED' "
                              f"and params.data_digest = '{candidate.tags['data_digest']}'",
                              order_by=["attributes.start_time DESC"])
    for run in runs:
        found = read_comparison(client, run)
        if found is None or sorted(found[0]) != sorted(seeds):
            continue
        arms = found[1]  # baseline/best in a sweep's comparison, champion/candidate in a promotion's
        for a, b in itertools.permutations(arms, 2):
            if (_config(arms[a]), _config(arms[b])) == (champion.config, candidate.config):
                return run.info.run_id, paired_comparison(arms[a].accuracies, arms[b].accuracies)
    return None


def _config(arm) -> dict:
    return {key: getattr(arm.config, key) for key in CONFIG_KEYS}


def read_comparison(client, run):
    """``(seeds, {arm name: compare.Arm})`` of a comparison run (arms without their nets), or None
    if it lacks a config or a seed's accuracy."""
    from legoexp.comparison.fits import Arm

    params = run.data.params
    try:
        seeds = [int(s) for s in params.get("seeds", "").split(",")]
    except ValueError:
        return None
    arms = {}
    for key in params:
        if key.endswith("_hidden1"):
            name = key[:-len("_hidden1")]
            config = config_of(params, f"{name}_")
            history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"{name}_test_accuracy")}
            if config is None or set(history) != set(seeds):
                return None
            arms[name] = Arm(name, TrainConfig(**config), [history[s] for s in seeds], [])
    return seeds, arms


def log_comparison(client, experiment_id: str, run_name: str, tags: dict, arms, seeds: list[int], result,
                   params: dict, input_example=None, optimism=None) -> str:
    """Log a comparison of two ``fits.Arm`` s as a ``comparison`` run and return its id: params
    ``seeds``, each arm's config as ``<arm>_<key>`` and ``params``; per-seed ``<arm>_test_accuracy``
    (step = seed); the summary metrics; plots/seed_comparison.png; with ``input_example``, each arm's
    median-seed model, its URI in tag ``<arm>_model_uri``; with ``optimism`` (``selection.optimism``),
    the second arm's search CV, re-scored CV and optimism as metrics and in the chart. The run ends FINISHED once all is logged,
    else FAILED (KILLED when interrupted)."""
    import mlflow

    from legoexp import plots, tracking
    from legoexp.comparison.fits import summary_metrics
    from legoexp.ops import faults

    a, b = arms
    run_id = client.create_run(experiment_id, run_name=run_name, tags={
        "legoexp.kind": "comparison", "test": result.test, "verdict": result.verdict(a.name, b.name), **tags}).info.run_id
    try:
        for arm in arms:
            params = params | {f"{arm.name}_{k}": v for k, v in arm.config.as_params().items() if k != "seed"}
        tracking.log_params(run_id, {"seeds": seeds_text(seeds), **params})
        tracking.log_metrics(run_id, summary_metrics(result, a.name, b.name) | (optimism.metrics() if optimism else {}))
        tracking.log_history(run_id, {f"{arm.name}_test_accuracy": arm.accuracies for arm in arms}, steps=seeds)
        with mlflow.start_run(run_id=run_id):
            tracking.log_figures({"seed_comparison": plots.seed_comparison(
                a.accuracies, b.accuracies, a.name, optimism.label if optimism else b.name, result=result,
                optimism=optimism)})
            for arm in arms if input_example is not None else ():
                info = tracking.log_model(arm.nets[arm.median_index], input_example=input_example,
                                          name=f"{arm.name}-model")
                client.set_tag(run_id, f"{arm.name}_model_uri", info.model_uri)
                faults.point("report.model_logged")
    except BaseException as e:
        client.set_terminated(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


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
    from legoexp.comparison.fits import run_arm
    from legoexp.comparison.stats import paired_comparison

    print(f"no comparison of these two yet: training both over seeds {seeds_text(seeds)} on the test split",
          file=sys.stderr)
    arms = [run_arm(role, TrainConfig(**v.config), seeds, train_split, test_split,
                    progress=lambda line: print("  " + line, file=sys.stderr))
            for role, v in (("champion", champion), ("candidate", candidate))]
    result = paired_comparison(arms[0].accuracies, arms[1].accuracies)

    from legoexp import tracking

    experiment_id = tracking.experiment_id(args.experiment_name, create=True, launched=launched)
    tags = {"model_name": name, "candidate_version": candidate.number, "champion_version": champion.number,
            "champion_alias": champion.role} | ({"mlflow.parentRunId": launched} if launched else {})
    run_id = log_comparison(client, experiment_id, f"comparison-v{candidate.number}-vs-v{champion.number}", tags,
                            arms, seeds, result, {"data_digest": train_split.digest, "test_digest": test_split.digest})
    return run_id, result
