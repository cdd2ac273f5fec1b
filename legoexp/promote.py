"""``python -m legoexp.promote`` (``mlflow run . -e promote``): move ``@champion`` on evidence, or roll it back.

The candidate (``@challenger``, or ``--version N``) becomes ``@champion`` of ``lego-classifier``
only if a paired multi-seed comparison on the test split against the current champion (the
``@baseline`` version while there is none) passes the gate: the lower bound of the 95% CI of the
per-seed difference candidate - champion in test_accuracy must be above -tolerance (above 0 with
``--require-better``). The evidence is a finished ``comparison`` run of exactly the two versions'
configurations on their data digest with the same seeds (the sweep's own comparison when the
champion is the baseline); without one, both are trained here with the sweep's code and the
comparison is logged. All is computed before the registry is touched; then tags and aliases move
through ``registry.apply``, which undoes itself if a step fails. The old champion keeps
``@previous-champion``; ``--rollback`` swaps the two back.
"""

import argparse
import math
import os
from datetime import datetime, timezone

from legoexp import config
from legoexp.comparison.runs import CONFIG_KEYS, Version, find_evidence, run_comparison
from legoexp.errors import ConfigError, UserError
from legoexp.ops.command import run_main
from legoexp.registry.gate import DEFAULT_TOLERANCE, RULE_HELP, Gate


def parse_seeds(text: str, where: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",")]
    except ValueError:
        seeds = []
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"{where}={text!r}; expected 2 or more distinct seeds >= 0, comma-separated (42,43,44)")
    return seeds


def _flag(text: str) -> bool:
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m legoexp.promote",
        description="Move the alias @champion of a registered model to the candidate (@challenger, or "
                    "--version N) if a paired multi-seed comparison on the test split against the current "
                    "@champion (@baseline while there is none) passes the gate; the old champion becomes "
                    "@previous-champion. An existing comparison run of the same two configurations, data and "
                    "seeds is reused; otherwise both are trained and the comparison is logged. " + RULE_HELP,
        epilog="Exit status: 0 promoted (or nothing to do), 1 the gate failed (registry unchanged), 2 bad "
               "input (registry unchanged). The flags also take a value (--force false), for `mlflow run`.")
    p.add_argument("--model-name", "--model_name", default=config.model_name(),
                   help=f"registered model (default: {config.model_name()})")
    p.add_argument("--version", help="the candidate version (default: the one with alias challenger)")
    p.add_argument("--tolerance", type=float, help=f"how much worse the candidate may be (default {DEFAULT_TOLERANCE})")
    p.add_argument("--require-better", nargs="?", const=True, default=False, type=_flag, metavar="true|false",
                   help="the CI's lower bound must be above 0")
    p.add_argument("--seeds", help="comma-separated seeds of the comparison (default: the candidate's seeds tag)")
    p.add_argument("--force", nargs="?", const=True, default=False, type=_flag, metavar="true|false",
                   help="promote even if the gate fails; recorded as tag forced=true")
    p.add_argument("--rollback", nargs="?", const=True, default=False, type=_flag, metavar="true|false",
                   help="swap @champion and @previous-champion (no gate): the previous champion is back, "
                        "the rolled-back one becomes @previous-champion, so a second --rollback undoes it")
    p.add_argument("--data", help="where the versions' data is, if their 'data' tag no longer points to it "
                                  "(its training split must still have their data_digest)")
    p.add_argument("--experiment-name", default="legoexp",
                   help="MLflow experiment of a new comparison run (default: legoexp; ignored under `mlflow run`)")
    args = p.parse_args(argv)
    for key in ("version", "seeds", "data"):  # `mlflow run` passes '' for "not given"
        if getattr(args, key) == "":
            setattr(args, key, None)
    if args.tolerance is not None and not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise ConfigError(f"tolerance={args.tolerance}; expected a number >= 0")
    gate_options = {"--version": args.version, "--tolerance": args.tolerance, "--seeds": args.seeds,
                    "--data": args.data, "--require-better": args.require_better or None, "--force": args.force or None}
    if args.rollback and (extra := [k for k, v in gate_options.items() if v is not None]):
        raise ConfigError(f"--rollback takes no {', '.join(extra)}: it applies no gate")
    return args


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _by_alias(name: str, aliases: dict, alias: str) -> Version | None:
    from legoexp import registry

    return Version(aliases[alias], alias, registry.get_version(name, aliases[alias]).tags) if alias in aliases else None


def record(launched: str | None, tags: dict) -> None:
    """Under ``mlflow run``, say on the run it made what this command did."""
    if launched:
        from legoexp import tracking

        tracking.set_tags(launched, tags)


def rollback(name: str, aliases: dict, launched: str | None) -> int:
    from legoexp import registry

    if "previous-champion" not in aliases or "champion" not in aliases:
        missing = "previous-champion" if "champion" in aliases else "champion"
        raise UserError(f"{name} has no version with alias {missing}; nothing to roll back")
    current, previous = aliases["champion"], aliases["previous-champion"]
    registry.apply(name, {previous: {"rolled_back_at": _now(), "rolled_back_from": current}},
                   {"previous-champion": current, "champion": previous})
    record(launched, {"mlflow.runName": f"rollback-to-v{previous}", "legoexp.kind": "rollback", "model_name": name,
                      "rolled_back_from": current})
    print(f"rolled back {name}: @champion is version {previous} again, @previous-champion is version {current}")
    return 0


def choose(name: str, aliases: dict, args) -> tuple[Version, Version]:
    """The candidate and the champion it must beat; a UserError if either is missing."""
    from legoexp import registry

    if args.version is not None:
        found = registry.get_version(name, args.version)
        if found is None:
            raise UserError(f"{name} has no version {args.version!r}")
        roles = sorted(a for a, v in aliases.items() if v == str(found.version))
        candidate = Version(str(found.version), ", @".join(roles) or "version", found.tags)
    else:
        candidate = _by_alias(name, aliases, "challenger")
        if candidate is None:
            raise UserError(f"{name} has no version with alias challenger; run python -m legoexp.sweep, "
                            "or pass --version N")
    champion = _by_alias(name, aliases, "champion") or _by_alias(name, aliases, "baseline")
    if champion is None:
        raise UserError(f"{name} has neither a @champion nor a @baseline version to compare {candidate} with")
    return candidate, champion


def comparable(name: str, candidate: Version, champion: Version, args) -> list[int]:
    """The seeds to compare the two with; a UserError if their tags cannot make a paired comparison."""
    for v in (candidate, champion):
        missing = [k for k in (*CONFIG_KEYS, "data", "data_digest") if k not in v.tags]
        if missing or v.config is None:
            raise UserError(f"{v} of {name} lacks valid tag(s) {', '.join(missing or CONFIG_KEYS)}: promote needs "
                            "the training config and data tags that python -m legoexp.sweep sets")
    if candidate.tags["data_digest"] != champion.tags["data_digest"]:
        raise UserError(f"{candidate} was trained on data_digest {candidate.tags['data_digest']} and {champion} on "
                        f"{champion.tags['data_digest']}: a paired comparison needs the same data")
    if args.seeds is not None:
        seeds = parse_seeds(args.seeds, "seeds")
    elif "seeds" in candidate.tags:
        seeds = parse_seeds(candidate.tags["seeds"], f"the seeds tag of {candidate}")
    else:
        raise UserError(f"{candidate} has no seeds tag; pass --seeds 42,43,44,45,46")
    return seeds


def main(argv=None) -> int:
    args = parse_args(argv)
    launched = os.environ.get("MLFLOW_RUN_ID")  # read now: mlflow.end_run() deletes it
    from mlflow.tracking import MlflowClient

    from legoexp import registry, tracking
    from legoexp.access import rights

    tracking.check_store()  # a registry that is not there is not made, empty, here
    name = args.model_name
    rights.check_promote(name)
    aliases = registry.model_aliases(name)
    if aliases is None:
        raise UserError(f"there is no registered model {name!r}; run python -m legoexp.sweep first, "
                        "or pass --model-name")
    if args.rollback:
        return rollback(name, aliases, launched)
    candidate, champion = choose(name, aliases, args)
    if champion.role == "champion" and champion.number == candidate.number:
        print(f"{candidate} of {name} is already @champion; nothing to do")
        return 0
    seeds = comparable(name, candidate, champion, args)
    gate = Gate(DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance, args.require_better)

    client = MlflowClient()
    print(f"candidate: {candidate} of {name}\nchampion:  {champion}"
          + ("" if champion.role == "champion" else " (there is no @champion yet)"))
    evidence = find_evidence(client, champion, candidate, seeds)
    if evidence is None:
        if not launched:
            rights.check_comparison(args.experiment_name)  # before training both
        evidence = run_comparison(client, name, champion, candidate, seeds, args, launched)
        print(f"evidence: new comparison run {evidence[0]}")
    else:
        print(f"evidence: comparison run {evidence[0]}")
    run_id, result = evidence
    passed = gate.passes(result)
    print("\n" + result.as_table(name_a="champion", name_b="candidate") + "\n")
    print(f"gate: {gate.rule()}\ngate {gate.outcome(result, seeds)}")
    record(launched, {"mlflow.runName": f"promote-v{candidate.number}", "legoexp.kind": "promotion",
                      "model_name": name, "evidence_run_id": run_id, "candidate_version": candidate.number,
                      "champion_version": champion.number, "gate_result": gate.outcome(result, seeds),
                      "outcome": "promoted" if passed else "forced" if args.force else "refused"})
    if not passed and not args.force:
        print(f"not promoted: {name} is unchanged (--force promotes anyway)")
        return 1

    tags = {"promoted_at": _now(), "promoted_over": f"{champion.number} (@{champion.role})",
            "gate_rule": gate.rule(), "gate_result": gate.outcome(result, seeds), "evidence_run_id": run_id,
            "forced": str(not passed).lower()}
    moves = {"previous-champion": champion.number} if champion.role == "champion" else {}
    registry.apply(name, {candidate.number: tags}, moves | {"champion": candidate.number})  # champion last
    print(f"promoted {candidate} of {name} to @champion" + (" (forced: the gate failed)" if not passed else "")
          + (f"; version {champion.number} is @previous-champion" if moves else ""))
    return 0


if __name__ == "__main__":
    run_main(main)
