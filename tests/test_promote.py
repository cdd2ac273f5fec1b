"""`python -m legoexp.promote`: the gate, --force, --rollback, atomic alias moves, bad input.

The slow tests share one tiny real sweep (a module-scoped MLflow store) and give each test its own
registered model, made of copies of the sweep's versions: v1 = the baseline (@baseline), v2 = a
second copy of it (the "twin": the same configuration, so against v1 its paired difference is
exactly 0 on any machine, which makes the gate's outcome deterministic), v3 = the sweep's best
(@challenger), whose evidence against the baseline is the sweep's own comparison run.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import mlflow
import pytest
from conftest import faults_env, held_at_fault, run_module
from mlflow.tracking import MlflowClient

from legoexp import promote, registry
from legoexp.comparison.stats import paired_comparison
from legoexp.ops.command import run_main

SWEPT_MODEL = "lego-swept"
TWIN_SEEDS = "44,45"  # not the sweep's seeds (42,43): the twin's evidence is never the sweep's run


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One tiny sweep in its own store: a registered baseline, challenger and comparison run."""
    home = tmp_path_factory.mktemp("promote")
    uri = f"sqlite:///{home}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"} | {"MLFLOW_TRACKING_URI": uri}
    proc = run_module("legoexp.sweep", "--trials", "3", "--folds", "2", "--seeds", "2", "--epochs", "2",
                      "--study-name", "promote-tests", "--experiment-name", "promote-tests",
                      "--model-name", SWEPT_MODEL, env=env, cwd=home)
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(home=home, uri=uri, env=env)


@pytest.fixture
def lab(swept, monkeypatch):
    """A fresh registered model: v1 @baseline, v2 its twin, v3 @challenger (the sweep's best)."""
    monkeypatch.chdir(swept.home)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", swept.uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(swept.uri)
    client = MlflowClient()
    name = f"lego-{uuid.uuid4().hex[:8]}"
    source = client.get_registered_model(SWEPT_MODEL).aliases
    for version in (source["baseline"], source["baseline"], source["challenger"]):
        client.copy_model_version(f"models:/{SWEPT_MODEL}/{version}", name)
    client.set_registered_model_alias(name, "baseline", "1")
    client.set_registered_model_alias(name, "challenger", "3")
    sweep_comparison = client.get_model_version(name, "3").tags["comparison_run_id"]
    return SimpleNamespace(name=name, client=client, env=swept.env, home=swept.home,
                           sweep_comparison=client.get_run(sweep_comparison))


def _promote(lab, *args):
    return run_module("legoexp.promote", "--model-name", lab.name, *args, env=lab.env, cwd=lab.home)


def _state(client, name):
    """Everything promote may change: the aliases and every version's tags."""
    aliases = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    return aliases, {str(v.version): dict(v.tags) for v in client.search_model_versions(f"name='{name}'")}


def _twin_comparisons(client):
    """Finished comparison runs of the baseline's config against itself over TWIN_SEEDS."""
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, "tags.`legoexp.kind` = 'comparison' and attributes.status = 'FINISHED' "
                              f"and params.seeds = '{TWIN_SEEDS}'")
    return [r for r in runs if r.data.params.get("candidate_hidden1") == r.data.params.get("champion_hidden1")]


# -- the gate ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("diffs, tolerance, require_better, passes", [
    ([0.0, 0.0, 0.0], 0.01, False, True),          # equal: the CI is exactly 0..0 > -0.01
    ([0.0, 0.0, 0.0], 0.01, True, False),          # ... but not better
    ([0.02, 0.03, 0.04], 0.01, True, True),        # clearly better
    ([-0.05, -0.04, -0.06], 0.01, False, False),   # clearly worse
    ([-0.05, -0.04, -0.06], 0.1, False, True),     # worse, within a generous tolerance
    ([-0.1, 0.1, 0.0], 0.01, False, False),        # noisy: the lower bound is far below 0
])
def test_the_gate_passes_only_when_the_ci_lower_bound_is_above_minus_tolerance_or_zero(
        diffs, tolerance, require_better, passes):
    champion = [0.8, 0.85, 0.9]
    result = paired_comparison(champion, [c + d for c, d in zip(champion, diffs)])
    gate = promote.Gate(tolerance, require_better)
    assert gate.passes(result) is passes
    assert gate.passes(result) is (result.ci_diff[0] > (0 if require_better else -tolerance))
    assert gate.outcome(result, [1, 2, 3]).startswith("passed" if passes else "failed")


@pytest.mark.slow
def test_the_gate_refusing_exits_1_prints_the_numbers_and_leaves_the_registry_unchanged(lab):
    before, comparisons = _state(lab.client, lab.name), len(_twin_comparisons(lab.client))
    proc = _promote(lab, "--version", "2", "--require-better", "--seeds", TWIN_SEEDS)
    assert proc.returncode == 1, proc.stderr
    assert "candidate - champion   +0.0000  +0.0000..+0.0000" in proc.stdout
    assert "gate failed: candidate - champion = +0.0000" in proc.stdout and "<= +0.0000" in proc.stdout
    assert "not promoted" in proc.stdout
    assert _state(lab.client, lab.name) == before
    evidence = _twin_comparisons(lab.client)
    assert len(evidence) == max(comparisons, 1)  # logged once, then reused
    run = evidence[0]
    assert run.data.tags["legoexp.kind"] == "comparison" and run.data.metrics["diff_ci_low"] == 0.0
    assert {"champion_version", "candidate_version", "verdict"} <= set(run.data.tags)
    history = lab.client.get_metric_history(run.info.run_id, "candidate_test_accuracy")
    assert sorted(m.step for m in history) == [44, 45]


@pytest.mark.slow
def test_force_promotes_past_a_failed_gate_and_tags_the_version_as_forced(lab, capsys):
    comparisons = len(_twin_comparisons(lab.client))
    # in-process (the command's path with --force is run for real in the next test): saves ~10 s
    assert promote.main(["--model-name", lab.name, "--version", "2", "--require-better", "--seeds", TWIN_SEEDS,
                         "--force"]) == 0
    out = capsys.readouterr().out
    assert "gate failed" in out and "(forced: the gate failed)" in out
    aliases, tags = _state(lab.client, lab.name)
    assert aliases == {"baseline": "1", "challenger": "3", "champion": "2"}
    assert tags["2"]["forced"] == "true" and tags["2"]["gate_result"].startswith("failed")
    assert tags["2"]["gate_rule"].endswith("> +0.0000")
    evidence = _twin_comparisons(lab.client)
    assert len(evidence) == max(comparisons, 1)
    assert tags["2"]["evidence_run_id"] in {r.info.run_id for r in evidence}


@pytest.mark.slow
def test_promotions_keep_the_previous_champion_and_rollback_swaps_them_back(lab, capsys):
    started = datetime.now(timezone.utc).replace(microsecond=0)
    # the twin passes the default gate (in-process to save a process start; the next steps are commands)
    assert promote.main(["--model-name", lab.name, "--version", "2", "--seeds", TWIN_SEEDS]) == 0
    aliases, tags = _state(lab.client, lab.name)
    assert aliases == {"baseline": "1", "challenger": "3", "champion": "2"}  # no champion before: none kept
    promoted = tags["2"]
    assert started <= datetime.fromisoformat(promoted["promoted_at"]) <= started + timedelta(minutes=5)
    assert promoted["promoted_over"] == "1 (@baseline)" and promoted["forced"] == "false"
    assert promoted["gate_rule"] == ("lower bound of the 95% CI of the paired difference (candidate - champion) "
                                     "in test_accuracy > -0.0100")
    assert promoted["gate_result"].startswith("passed: candidate - champion = +0.0000")
    assert lab.client.get_run(promoted["evidence_run_id"]).data.params["seeds"] == TWIN_SEEDS

    # The challenger against the twin champion: the same configs as the sweep's own comparison,
    # which is reused as the evidence; --force, since its outcome depends on the machine's numbers.
    second = _promote(lab, "--force")
    assert second.returncode == 0, second.stderr
    aliases, tags = _state(lab.client, lab.name)
    assert aliases == {"baseline": "1", "challenger": "3", "champion": "3", "previous-champion": "2"}
    sweep = lab.sweep_comparison
    assert tags["3"]["evidence_run_id"] == sweep.info.run_id
    assert f"{sweep.data.metrics['diff_ci_low']:+.4f}" in tags["3"]["gate_result"]
    assert tags["3"]["forced"] == str(sweep.data.metrics["diff_ci_low"] <= -0.01).lower()
    assert tags["3"]["promoted_over"] == "2 (@champion)"

    back = _promote(lab, "--rollback")
    assert back.returncode == 0, back.stderr
    aliases, tags = _state(lab.client, lab.name)
    assert aliases == {"baseline": "1", "challenger": "3", "champion": "2", "previous-champion": "3"}
    assert tags["2"]["rolled_back_from"] == "3" and "rolled_back_at" in tags["2"]
    assert tags["2"]["evidence_run_id"] == promoted["evidence_run_id"]  # its promotion's record stays

    assert promote.main(["--model-name", lab.name, "--rollback"]) == 0  # a rollback of the rollback
    assert _state(lab.client, lab.name)[0] == {"baseline": "1", "challenger": "3", "champion": "3",
                                               "previous-champion": "2"}
    assert promote.main(["--model-name", lab.name]) == 0
    assert "already @champion; nothing to do" in capsys.readouterr().out


def test_under_mlflow_run_the_comparison_is_a_child_of_its_run_which_records_the_outcome(lab, monkeypatch):
    # What `mlflow run . -e promote` does: it makes a run and passes its id in MLFLOW_RUN_ID.
    launched = lab.client.create_run(lab.sweep_comparison.info.experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    assert promote.main(["--model-name", lab.name, "--version", "2", "--seeds", "46,47"]) == 0  # in-process: ~5 s
    tags = lab.client.get_run(launched).data.tags
    assert tags["legoexp.kind"] == "promotion" and tags["outcome"] == "promoted"
    assert tags["mlflow.runName"] == "promote-v2" and tags["gate_result"].startswith("passed")
    evidence = lab.client.get_run(tags["evidence_run_id"])
    assert evidence.data.tags["mlflow.parentRunId"] == launched and evidence.data.params["seeds"] == "46,47"
    assert evidence.info.experiment_id == lab.sweep_comparison.info.experiment_id


# -- atomicity --------------------------------------------------------------------------------------
class InjectedFailure(RuntimeError):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("method, argv", [
    ("set_registered_model_alias", ["--force"]),           # previous-champion moved, champion fails
    ("set_model_version_tag", ["--force"]),                # the second of the promotion's tags fails
    ("set_registered_model_alias", ["--rollback"]),        # previous-champion moved, champion fails
])
def test_a_failure_between_registry_steps_leaves_aliases_and_tags_as_they_were(lab, monkeypatch, method, argv):
    registry.apply(lab.name, {}, {"previous-champion": "1", "champion": "2"})
    before = _state(lab.client, lab.name)
    real = getattr(MlflowClient, method)
    calls = []

    def fail_on_second_call(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 2:  # a real store failure cannot be had on demand: this is the one mock
            raise InjectedFailure("the store went away")
        return real(self, *args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(InjectedFailure):
        patch.setattr(MlflowClient, method, fail_on_second_call)
        promote.main(["--model-name", lab.name, *argv])
    assert len(calls) >= 2
    assert _state(lab.client, lab.name) == before


# -- bad input ------------------------------------------------------------------------------------
# hidden2 63: a config no other test trains, so no comparison of theirs in the shared store counts as evidence
VERSION_TAGS = {"hidden1": "128", "hidden2": "63", "lr": "0.04", "batch_size": "34", "epochs": "2",
                "data": "synthetic", "data_source": "synthetic:0", "data_digest": "15e69814fecb3aed",
                "seeds": "42,43", "comparison_run_id": "none", "study_name": "s"}


@pytest.mark.slow
def test_sigterm_between_registry_steps_undoes_them_and_exits_143(lab, tmp_path):
    before = _state(lab.client, lab.name)
    once = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-m", "legoexp.promote", "--model-name", lab.name, "--force"],
                            env=faults_env(lab.env, "registry.step#2=stop", once), cwd=lab.home,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pid = held_at_fault(proc, once)
    assert _state(lab.client, lab.name) != before  # one step is done
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGCONT)
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    print(f"SIGTERM to promote: exited {proc.returncode} after {time.monotonic() - started:.2f} s")
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "terminated (SIGTERM)"
    assert _state(lab.client, lab.name) == before


def _tagged_model(client, change):
    """A registered model whose versions carry the sweep's tags (no artifacts: nothing is loaded)."""
    name = f"lego-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, source="file:///nowhere/model", tags=VERSION_TAGS)
    client.set_registered_model_alias(name, "baseline", "1")
    client.set_registered_model_alias(name, "challenger", "2")
    change(client, name)
    return name


def _nothing(client, name):
    pass


@pytest.mark.parametrize("change, argv, message", [
    (_nothing, ["--model-name", "no-such-model"], "there is no registered model 'no-such-model'"),
    (lambda c, n: c.delete_registered_model_alias(n, "challenger"), [], "has no version with alias challenger"),
    (_nothing, ["--version", "99"], "has no version '99'"),
    (lambda c, n: c.delete_registered_model_alias(n, "baseline"), [], "has neither a @champion nor a @baseline"),
    (_nothing, ["--rollback"], "has no version with alias champion; nothing to roll back"),
    (lambda c, n: c.set_model_version_tag(n, "2", "data_digest", "0123456789abcdef"), [],
     "a paired comparison needs the same data"),
    (lambda c, n: c.delete_model_version_tag(n, "2", "lr"), [], "lacks valid tag(s) lr"),
    (lambda c, n: [c.set_model_version_tag(n, v, "data", "synthetic:1") for v in "12"], [],
     "data='synthetic:1': its training split has digest"),
    (_nothing, ["--tolerance", "-1"], "tolerance=-1.0; expected a number >= 0"),
    (_nothing, ["--seeds", "42"], "seeds='42'; expected 2 or more distinct seeds"),
    (_nothing, ["--rollback", "--force"], "--rollback takes no --force"),
], ids=["unknown-model", "no-challenger", "unknown-version", "no-champion-no-baseline", "nothing-to-roll-back",
        "different-data", "missing-config-tag", "data-digest-differs", "negative-tolerance", "one-seed",
        "rollback-with-gate-options"])
def test_bad_input_is_one_line_exit_2_and_leaves_the_registry_unchanged(mlflow_env, capsys, change, argv, message):
    client = MlflowClient()
    name = _tagged_model(client, change)
    before = _state(client, name)
    capsys.readouterr()  # MLflow's messages on creating the store
    with pytest.raises(SystemExit) as exit_:
        run_main(promote.main, ["--model-name", name, *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and message in err
    assert _state(client, name) == before


def test_a_missing_store_is_refused_not_created(tmp_path):
    store = tmp_path / "mlflow.db"
    proc = run_module("legoexp.promote", env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: there is no tracking store at sqlite:///{store}")
    assert proc.stderr.count("\n") == 1 and not store.exists()


def test_the_command_reports_bad_input_in_one_line_with_exit_2(mlflow_env):
    proc = run_module("legoexp.promote", "--model-name", "no-such-model", env=mlflow_env)
    assert proc.returncode == 2
    assert proc.stderr == "error: there is no registered model 'no-such-model'; run python -m legoexp.sweep " \
                          "first, or pass --model-name\n"
