"""What a finished sweep does with its best trial: compare it with the baseline, log it, register it.

The baseline and the best trial's configuration are trained with the same seeds on the whole
training split and scored once on the test split (read here for the first time), the comparison is
logged as the study's ``comparison`` run, and both median-seed models are registered (@challenger,
and @baseline once) with the config, data and seeds that made them. The input is a ``Finished``
study: what the search leaves, named.
"""

import functools
import sys
from dataclasses import dataclass, replace

import numpy as np
import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from legoexp import registry
from legoexp.comparison.fits import compare, fit_configs
from legoexp.comparison.runs import log_comparison, read_comparison, seeds_text
from legoexp.comparison.stats import paired_comparison
from legoexp.config import TrainConfig
from legoexp.ops import faults, timings
from legoexp.selection import optimism
from legoexp.study import design, progress


@dataclass(frozen=True)
class Finished:
    """A study whose search is over, and what its comparison needs."""
    study: optuna.Study
    parent_id: str  # the study's parent run: the comparison is its child
    experiment_id: str
    baseline: TrainConfig  # the lab's hyperparameters at the sweep's epochs and seed
    seeds: list[int]  # of the comparison
    model_name: str  # the registered model
    train_split: object  # data.Split
    provenance: dict  # data, data_source, data_digest: tags of the registered versions
    runner: object  # study.folds.FoldRunner: trains the comparison's fits


def needs_comparison(f: Finished, chosen) -> bool:
    """False when the ``chosen`` trial (a ``selection.rules.Candidate``) was already compared and
    registered (a rerun)."""
    done = _client().get_run(f.parent_id).data.tags.get("compared_trial")
    return done != str(chosen.number)


def start_comparison(f: Finished, chosen) -> None:
    """Hand the fits of the comparison of ``chosen`` that ``compare_and_register`` is about to make to
    the fold workers: they train while this process does something else (the figures, when the rule
    knows its pick before the re-scores). Nothing if it was made; once only, if called again."""
    if _finished_comparison(f, chosen.number, f.seeds) is None:
        f.runner.start_fits(fit_configs([f.baseline, _config(f, chosen)], f.seeds))


_client = functools.cache(MlflowClient)  # one client for the report's calls


def _config(f: Finished, chosen) -> TrainConfig:
    return replace(f.baseline, **chosen.params)


def compare_and_register(f: Finished, choice, test_split, quiet: bool = False) -> None:
    """Compare the configuration that ``choice`` (a ``selection.rules.Choice``) picked with the baseline
    over the seeds, log it as the study's ``comparison`` run (its arm ``best`` is the pick, whatever
    the rule) with the pick's optimism, register both models. Call it holding the study's lock: a
    rerun after a kill at any step reuses what was done (a finished comparison run, versions
    registered from it) and does the rest, so nothing is trained, logged or registered twice."""
    chosen, seeds = choice.chosen, f.seeds
    run = _finished_comparison(f, chosen.number, seeds)
    name = "best" if choice.rule == "best" else "chosen"  # as printed
    if run is None:
        _end_abandoned_comparisons(f)
        print(f"comparing baseline and {name} (trial {chosen.number}) over seeds {seeds} on the test split",
              file=sys.stderr)
        comparison = compare(f.baseline, _config(f, chosen), seeds, f.train_split, test_split,
                             progress=progress.Fits(2 * len(seeds), quiet), fit=f.runner.fits)
        timings.lap("comparison")
        faults.point("report.compared")
        tags = {"mlflow.parentRunId": f.parent_id, "legoexp.study": f.study.study_name, **_choice_tags(choice)}
        params = {"best_trial": chosen.number, "data_digest": f.train_split.digest,
                  "test_digest": test_split.digest}
        run_id = log_comparison(_client(), f.experiment_id, "comparison", tags,
                                (comparison.baseline, comparison.best), seeds, comparison.result, params,
                                input_example=test_split.images[:2],
                                optimism=optimism.of(choice, comparison.best.accuracies))
        run = _client().get_run(run_id)
    seeds, arms = read_comparison(_client(), run)
    result = paired_comparison(arms["baseline"].accuracies, arms["best"].accuracies)
    print("\n" + result.as_table(name_b=name) + "\n" + result.verdict(name_b=name))
    print(optimism.of(choice, arms["best"].accuracies).text())
    _register(f, run, arms, seeds, result, choice)
    _client().set_tag(f.parent_id, "compared_trial", str(chosen.number))
    timings.lap("models")


def _choice_tags(choice) -> dict:
    """What the pick was made from: the rule, the candidates, the chosen model's size and the most accurate's
    (as text: a tracking server takes nothing else)."""
    c, m = choice.chosen, choice.most_accurate
    tags = {"select": choice.rule, "candidates": ",".join(str(x.number) for x in choice.candidates),
            "chosen_param_count": c.param_count, "chosen_macs_per_image": c.macs_per_image,
            "most_accurate_trial": m.number, "most_accurate_param_count": m.param_count} | \
        ({"tolerance": choice.tolerance} if choice.rule == "simplest-within" else {})
    return {k: str(v) for k, v in tags.items()}


def _study_comparisons(f: Finished, where: str) -> list:
    return _client().search_runs([f.experiment_id], f"tags.`legoexp.study` = '{f.study.study_name}' "
                                     f"and tags.`legoexp.kind` = 'comparison' and {where}")


def _finished_comparison(f: Finished, number: int, seeds):
    """This study's finished comparison of trial ``number`` over ``seeds`` with both models logged, or None."""
    for run in _study_comparisons(f, f"attributes.status = 'FINISHED' and params.best_trial = "
                                          f"'{number}' and params.seeds = '{seeds_text(seeds)}'"):
        if {"baseline_model_uri", "best_model_uri"} <= set(run.data.tags):
            return run
    return None


def _end_abandoned_comparisons(f: Finished) -> None:
    """Comparisons are logged holding the study's lock, which we hold: a RUNNING one is a dead process's."""
    for run in _study_comparisons(f, "attributes.status = 'RUNNING'"):
        _client().set_terminated(run.info.run_id, "KILLED")


def _register(f: Finished, run, arms, seeds, result, choice) -> None:
    name = f.model_name
    common = {"comparison_run_id": run.info.run_id, "study_name": f.study.study_name}
    chosen = choice.chosen
    for role, alias in (("best", "challenger"), ("baseline", "baseline")):
        arm = arms[role]
        key = {"comparison_run_id": run.info.run_id, "role": role}
        if alias == "baseline" and registry.alias_version(name, "baseline") is not None \
                and registry.find_version(name, key) is None:
            continue  # a baseline is registered once, by the first sweep
        lo, hi = result.ci_b if role == "best" else result.ci_a
        value = chosen.search_cv if role == "best" else _baseline_value(f)
        # the version's training config and data, so promotion can retrain it with other seeds
        config = {k: v for k, v in arm.config.as_params().items() if k != "seed"}
        picked = _choice_tags(choice) | {f"chosen_{k}": v for k, v in choice.latency.get(chosen.number, {}).items()} \
            if role == "best" else {}
        tags = {**common, **key, **config, **f.provenance, **picked,
                "test_accuracy_mean": np.mean(arm.accuracies),
                "test_accuracy_ci": f"{lo:.4f}..{hi:.4f}", "seed": seeds[arm.median_index], "seeds": seeds_text(seeds)}
        if value is not None:
            tags["val_accuracy"] = value
        version = registry.register_once(run.data.tags[f"{role}_model_uri"], name, alias, tags, key)
        print(f"registered {name} version {version} as @{alias}")


def _baseline_value(f: Finished) -> float | None:
    """val_accuracy of the study's baseline trial; None if it was pruned or failed."""
    for t in f.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("baseline"):
            return design.accuracy(t)
    return None
