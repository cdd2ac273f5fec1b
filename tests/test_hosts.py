"""Workers on separate hosts: PostgreSQL and the ``mlflow server`` on one host, the same sweep command
on three others (tests/hosts.py), a host cut off the network mid-trial, a host that dies mid-trial."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from conftest import faults_env, held_at_fault

pytest_plugins = ["services", "hosts"]
pytestmark = pytest.mark.slow

TRIALS = 6
HEARTBEAT = 2  # seconds; silent for 3 of them, a trial is failed by the others
WAIT = 300  # seconds, for anything a scenario waits for

STATE = textwrap.dedent("""
    import json, sys, optuna
    from mlflow.tracking import MlflowClient
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, name, tracking = sys.argv[1:]
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    print(json.dumps({
        "trials": [{"number": t.number, "state": t.state.name, "owner": t.user_attrs.get("owner"),
                    "run": t.user_attrs.get("mlflow_run_id")} for t in trials],
        "runs": {r.info.run_id: {"status": r.info.status, "kind": r.data.tags.get("legoexp.kind"),
                                 "parent": r.data.tags.get("mlflow.parentRunId")} for r in runs}}))
""")

# what the study holds now, read over the cluster's socket: cheap enough to poll
TRIALS_NOW = """SELECT t.number, t.state::text, a.value_json FROM trials t JOIN studies s USING (study_id)
                LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'owner'
                WHERE s.study_name = %s ORDER BY t.number"""


class Sweep:
    """The same ``python -m legoexp.sweep`` on every worker host, on a fresh database of its own."""

    def __init__(self, hosts, tmp_path: Path, faults: dict[str, str] | None = None):
        self.hosts, self.name = hosts, f"hosts-{uuid.uuid4().hex[:8]}"
        self.database = self.name.replace("-", "_")
        self.storage = hosts.storage_url(self.database)
        command = [sys.executable, "-m", "legoexp.sweep", "--study-name", self.name, "--experiment-name", self.name,
                   "--model-name", self.name, "--storage", self.storage, "--trials", str(TRIALS), "--folds", "2",
                   "--seeds", "2", "--epochs", "3", "--heartbeat", str(HEARTBEAT)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LEGOEXP_"))}
        env["MLFLOW_TRACKING_URI"] = hosts.tracking_uri
        self.logs, self.processes = {}, {}
        self.held = tmp_path / "held"  # the pid of the process that stopped at its fault point
        for host in hosts.workers:  # all at once, on a fresh database
            self.logs[host.name] = tmp_path / f"{host.name}.log"
            (tmp_path / host.name).mkdir()
            host_env = faults_env(env, faults[host.name], self.held) if host.name in (faults or {}) else env
            self.processes[host.name] = host.start(command, self.logs[host.name], env=host_env,
                                                   cwd=tmp_path / host.name)

    def trials(self) -> list[tuple[int, str, str | None]]:
        """(number, state, owner host) of each trial now."""
        rows = self.hosts.query(self.database, TRIALS_NOW, (self.name,))
        return [(n, state, owner.strip('"').partition(":")[0] if owner else None) for n, state, owner in rows]

    def wait_for(self, predicate, what: str):
        deadline = time.monotonic() + WAIT
        while not (found := self._try(predicate)):
            if time.monotonic() > deadline or all(p.poll() is not None for p in self.processes.values()):
                raise AssertionError(f"gave up waiting for {what}\n{self.tails()}")
            time.sleep(0.3)
        return found

    @staticmethod
    def _try(predicate):
        import psycopg2  # here: without it the module is skipped (tests/hosts.py), not broken

        try:
            return predicate()
        except psycopg2.errors.UndefinedTable:  # no sweep has made Optuna's tables yet
            return None

    def held_at_fault(self, host: str) -> int:
        """The pid of the sweep on ``host`` once it holds at its fault point."""
        try:
            return held_at_fault(self.processes[host], self.held, WAIT)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.tails()}") from None

    def finish(self) -> dict[str, int]:
        deadline = time.monotonic() + WAIT
        for process in self.processes.values():
            try:
                process.wait(timeout=max(1, deadline - time.monotonic()))
            except Exception:
                raise AssertionError(f"the sweeps did not end in {WAIT} s\n{self.tails()}") from None
        return {host: p.returncode for host, p in self.processes.items()}

    def state(self) -> dict:
        return self.hosts.db.python(STATE, self.storage, self.name, self.hosts.tracking_uri)

    def tails(self) -> str:
        return "\n".join(f"--- {host} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:])
                         for host, log in self.logs.items() if log.exists())

    def stop(self) -> None:
        """Whatever still runs, killed: a failed test leaves nothing running on the hosts."""
        for host in self.hosts.workers:
            host.kill_all()


@pytest.fixture
def sweep(hosts, tmp_path):
    made = []

    def start(**kwargs) -> Sweep:
        made.append(Sweep(hosts, tmp_path, **kwargs))
        return made[-1]

    yield start
    for s in made:
        s.stop()


def assert_complete(state: dict) -> None:
    """Exactly TRIALS finished trials, numbered once each; one parent run and one comparison; nothing
    RUNNING anywhere."""
    trials, runs = state["trials"], state["runs"]
    assert sum(t["state"] in ("COMPLETE", "PRUNED") for t in trials) == TRIALS, trials
    assert [t["number"] for t in trials] == list(range(len(trials)))
    assert not [t for t in trials if t["state"] == "RUNNING"]
    assert not [r for r in runs.values() if r["status"] == "RUNNING"]
    parents = [run_id for run_id, r in runs.items() if r["kind"] == "sweep"]
    assert len(parents) == 1
    assert all(r["parent"] == parents[0] for run_id, r in runs.items() if run_id != parents[0])
    assert [r["status"] for r in runs.values() if r["kind"] == "comparison"] == ["FINISHED"]


def test_three_hosts_started_together_share_one_study(sweep):
    s = sweep()
    codes = s.finish()
    assert codes == {"w1": 0, "w2": 0, "w3": 0}, s.tails()
    state = s.state()
    assert_complete(state)
    assert len({t["owner"].partition(":")[0] for t in state["trials"]}) >= 2  # trials ran on several hosts


def test_a_host_cut_off_mid_trial_loses_its_trial_and_counts_nothing_twice(sweep, hosts):
    s = sweep(faults={"w2": "trial.fold#1=stop"})
    pid = s.held_at_fault("w2")
    # the trial it reports on, and the next one it has claimed already (unless the study was full)
    held = [number for number, state, host in s.trials() if state == "RUNNING" and host == "w2"]
    assert 1 <= len(held) <= 2
    cut = hosts.worker("w2")
    cut.cut()
    os.kill(pid, signal.SIGCONT)  # on it goes, into a fold report that cannot arrive
    s.wait_for(lambda: all((n, "FAIL", "w2") in s.trials() for n in held), f"trials {held} of the cut host to fail")
    # the database ends the cut host's sessions a grace after it went silent (legoexp/study/storage.py), so
    # what the host sent meanwhile is refused once its link is back, as after any long cut
    s.wait_for(lambda: not hosts.sessions_from(cut), "the database to end the cut host's sessions")
    cut.reconnect()
    codes = s.finish()
    state = s.state()
    assert_complete(state)
    for number in held:
        lost = state["trials"][number]
        assert lost["state"] == "FAIL" and state["runs"][lost["run"]]["status"] == "KILLED"
    assert codes == {"w1": 0, "w2": 0, "w3": 0}, s.tails()


def test_a_host_killed_mid_trial_is_found_by_its_silence(sweep, hosts):
    s = sweep(faults={"w3": "trial.fold#1=stop"})
    s.held_at_fault("w3")
    held = [number for number, state, host in s.trials() if state == "RUNNING" and host == "w3"]
    assert 1 <= len(held) <= 2  # the trial it reports on, and the next one if it could claim it
    hosts.worker("w3").kill_all()
    codes = s.finish()
    assert codes["w1"] == codes["w2"] == 0, s.tails()
    state = s.state()
    assert_complete(state)
    for number in held:
        dead = state["trials"][number]
        assert dead["state"] == "FAIL"
        assert state["runs"][dead["run"]]["status"] == "KILLED"


HOLD_THE_LOCK = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import optuna
    from legoexp.study.storage import StudyLock, open_storage
    url, heartbeat = sys.argv[1], int(sys.argv[2])
    storage = open_storage(url, Path("."), heartbeat)
    with StudyLock(url, Path("."), heartbeat)():
        print("held", flush=True)
        sys.stdin.readline()  # the test has cut this host off
        started = time.monotonic()
        try:
            storage.get_all_studies()
        except Exception as e:
            print(json.dumps({"error": type(e).__name__, "after": time.monotonic() - started}), flush=True)
""")
TAKE_THE_LOCK = textwrap.dedent("""
    import sys
    from pathlib import Path
    from legoexp.study.storage import StudyLock
    with StudyLock(sys.argv[1], Path("."), int(sys.argv[2]))():
        print("taken", flush=True)
""")


def test_a_host_cut_off_holding_the_study_lock_loses_it_and_gives_up_itself(hosts):
    """Neither end waits for ever on a silent peer: the database ends the cut host's session, which
    frees the study's lock for the others, and the cut host's own request fails instead of hanging."""
    url, heartbeat = hosts.storage_url(f"lock_{uuid.uuid4().hex[:8]}"), 1
    cut, other = hosts.workers[0], hosts.workers[1]
    holder = subprocess.Popen(cut.command([sys.executable, "-c", HOLD_THE_LOCK, url, str(heartbeat)]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        cut.cut()
        holder.stdin.write("go\n")
        holder.stdin.flush()
        taker = subprocess.run(other.command([sys.executable, "-c", TAKE_THE_LOCK, url, str(heartbeat)]),
                               capture_output=True, text=True, timeout=WAIT)
        assert taker.stdout.strip() == "taken", taker.stderr
        out, err = holder.communicate(timeout=WAIT)  # TCP alone would retransmit for 15 min
        assert json.loads(out)["error"] in ("OperationalError", "StorageInternalError"), err
    finally:
        holder.kill()
        cut.reconnect()
