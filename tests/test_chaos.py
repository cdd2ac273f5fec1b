"""Chaos: kill -9 the sweep (with its workers) and promote at seeded points across the whole run.

Each round reruns the same command with one fault point set to SIGKILL its process group (the
sweep, its ``--jobs`` workers and fold processes: a pod or host going away) at the N-th time a
process passes it: in the search (claims, fold reports, tells, fold training), after it, while
figures are logged, while the re-scoring is logged, after the comparison, between logging models, between registering and aliasing;
then ``promote --force`` between its registry steps. After the last clean rerun the study and the
registry must be whole: nothing lost, nothing twice, nothing RUNNING.

``LEGOEXP_CHAOS_POINTS`` (default 10) sets the number of kill points: a longer soak runs one
study per 10 points, each with its own schedule drawn from ``LEGOEXP_CHAOS_SEED`` (default 11).
"""

import os
import random
import signal
import subprocess
import sys
import uuid

import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from test_sweep import _runs, _store_dir, _study

TRIALS, FOLDS = 8, 2
SEARCH = ["trial.claimed", "trial.fold", "trial.told", "fold.train"]
REPORT = ["search.done", "report.figures", "rescore.logging", "report.compared", "report.model_logged", "report.registered"]
PASSES = {"report.model_logged": 2, "report.registered": 2}  # times one run passes a report point


def schedule(rng: random.Random, points: int = 10) -> list[tuple[str, int, int]]:
    """(fault point, N-th pass, --jobs) per round, in the order the run reaches them: search points
    first (early passes, so that each round gets a little further), then report points. Folds train in
    processes of their own only with --jobs 1."""
    report = sorted(rng.sample(REPORT, k=points // 2), key=REPORT.index)
    search = [rng.choice(SEARCH) for _ in range(points - len(report))]
    return ([(p, rng.randint(1, 3), 1 if p == "fold.train" else rng.choice([1, 2])) for p in search] +
            [(p, rng.randint(1, PASSES.get(p, 1)), rng.choice([1, 2])) for p in report])


def _run(args, env, spec=None) -> subprocess.CompletedProcess:
    if spec:
        env = {**env, "LEGOEXP_FAULTS": spec}
    # a session of its own: `killgroup` takes the command with everything it started, and nothing else
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, start_new_session=True)


@pytest.mark.slow
def test_kill_9_at_seeded_points_then_the_study_and_registry_are_whole(mlflow_env, tracking_uri):
    rng = random.Random(int(os.environ.get("LEGOEXP_CHAOS_SEED", "11")))
    points = int(os.environ.get("LEGOEXP_CHAOS_POINTS", "10"))
    killed = []
    for cycle in range(max(1, points // 10)):
        killed += _one_study(rng, mlflow_env, tracking_uri)
    print(f"chaos: {len(killed)} kills survived in {max(1, points // 10)} studies: {killed}")


def _one_study(rng, mlflow_env, tracking_uri) -> list[str]:
    name = f"chaos-{uuid.uuid4().hex[:8]}"
    model = f"lego-{name}"
    sweep = [sys.executable, "-m", "legoexp.sweep", "--study-name", name, "--experiment-name", name,
             "--model-name", model, "--trials", str(TRIALS), "--folds", str(FOLDS), "--seeds", "2",
             "--epochs", "2"]
    killed = []
    for point, n, jobs in schedule(rng):
        done = _run([*sweep, "--jobs", str(jobs)], mlflow_env, f"{point}#{n}=killgroup")
        assert done.returncode in (0, -signal.SIGKILL), f"{point}#{n} (--jobs {jobs}):\n{done.stderr[-3000:]}"
        if done.returncode == -signal.SIGKILL:
            assert f"fault point {point}#{n}: killgroup" in done.stderr
            killed.append(point)
    final = _run(sweep, mlflow_env)
    assert final.returncode == 0, final.stderr[-3000:]
    assert set(killed) & set(SEARCH) and set(killed) & set(REPORT)  # both halves of the run were hit

    promote = [sys.executable, "-m", "legoexp.promote", "--model-name", model, "--force"]
    for n in sorted(rng.sample(range(1, 8), k=2)):  # 6 tags, then @champion: killed between registry steps
        done = _run(promote, mlflow_env, f"registry.step#{n}=kill")
        assert done.returncode in (0, -signal.SIGKILL), done.stderr[-3000:]  # 0: a kill after the last step
        killed += ["registry.step"] * (done.returncode == -signal.SIGKILL)
    promoted = _run(promote, mlflow_env)
    assert promoted.returncode == 0, promoted.stderr[-3000:]

    trials = _study(_store_dir(tracking_uri), name).get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == TRIALS
    assert [t.number for t in trials] == list(range(len(trials)))  # no trial number twice
    assert not any(t.state == TrialState.RUNNING for t in trials)
    runs = _runs(name)
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    parents = [r for r in runs if r.data.tags["legoexp.kind"] == "sweep"]
    assert [p.info.status for p in parents] == ["FINISHED"]
    counted = [r.data.tags["trial_number"] for r in runs
               if r.data.tags["legoexp.kind"] == "trial" and r.data.tags["state"] in ("complete", "pruned")]
    assert sorted(counted) == sorted(str(t.number) for t in trials if t.state != TrialState.FAIL)  # each once

    client = MlflowClient()
    best = _study(_store_dir(tracking_uri), name).best_trial.number
    assert parents[0].data.tags["compared_trial"] == str(best)
    comparisons = [r for r in runs if r.data.tags["legoexp.kind"] == "comparison" and r.info.status == "FINISHED"]
    assert [r.data.params["best_trial"] for r in comparisons] == [str(best)]
    rescorings = [r for r in runs if r.data.tags["legoexp.kind"] == "rescoring" and r.info.status == "FINISHED"]
    assert [r.data.params["candidates"] for r in rescorings] == [str(best)]  # re-scored and logged once
    versions = client.search_model_versions(f"name = '{model}'")
    assert sorted(v.tags["role"] for v in versions) == ["baseline", "best"]  # the best model registered once
    assert {v.tags["comparison_run_id"] for v in versions} == {comparisons[0].info.run_id}
    by_role = {v.tags["role"]: v.version for v in versions}
    aliases = client.get_registered_model(model).aliases
    assert aliases == {"challenger": by_role["best"], "baseline": by_role["baseline"], "champion": by_role["best"]}
    champion = client.get_model_version(model, by_role["best"]).tags
    assert champion["promoted_over"] == f"{by_role['baseline']} (@baseline)"
    assert champion["evidence_run_id"] == comparisons[0].info.run_id
    return killed
