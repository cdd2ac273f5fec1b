"""Who may do what on a tracking server with MLflow's basic-auth, set up by `python -m legoexp.access`.

One real `mlflow server --app-name basic-auth` (nothing granted means nothing allowed), one tiny
study logged and registered by the user `sweep`, then each role's commands and requests against
it (commands that do not depend on each other run at the same time). Then the table of the
pre-checks: for each role and each operation legoexp checks before it starts, the check's verdict
against what the server does when the operation is tried without one, on that server and on a
second one with MLflow's default `default_permission = READ`. Every command's output is kept, and
the last test looks for the passwords in it and in everything the study logged.
"""

import contextlib
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import optuna
import pytest
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from legoexp.access import admin as access
from legoexp.access.rights import Rights, check_sweep
from legoexp.access.rules import ROLES, refusal
from legoexp.errors import AccessError
from legoexp.registry import register_once

pytest_plugins = ["services"]
pytestmark = pytest.mark.slow

STUDY = "auth-study"
MODEL = "lego-classifier"
TABLE_USERS = {  # the table's users, with their rights on its experiment and model
    "rt-sweep": "role sweep", "rt-worker": "role worker", "rt-promoter": "role promoter", "rt-reader": "role reader",
    "rt-own": "EDIT on the experiment, by MLflow's own grant_user_permission; no model",
    "rt-tier": "EDIT on the experiment and the model, READ on every run, by MLflow's grant_user_permission"}
PASSWORDS = {user: secrets.token_urlsafe(15) for user in ("sweep", "worker", "promoter", "reader1", "outsider",
                                                          *TABLE_USERS)}
OUTPUTS = []  # every command's stdout and stderr, for the last test


def _env(server, user=None, password=None, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    env["MLFLOW_TRACKING_URI"] = server.url
    if user:
        env |= {"MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": password or PASSWORDS.get(user) or server.admin_password}
    return env | extra


def _run(home, *commands) -> list[subprocess.CompletedProcess]:
    """``(env, module, *args)`` commands, started together as users would start them; their results."""
    started = [subprocess.Popen([sys.executable, "-m", module, *map(str, args)], env=env, cwd=home, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for env, module, *args in commands]
    done = []
    for process in started:
        out, err = process.communicate(timeout=300)
        OUTPUTS.append(out + err)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return done


def _refused(done, *words):
    """Exit 2 with one `error:` line holding ``words``, and no traceback."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), last


def _sweep(*extra):
    return ("legoexp.sweep", "--study-name", STUDY, "--experiment-name", STUDY, "--storage", "journal:optuna.journal",
            "--folds", "2", "--seeds", "2", "--epochs", "2", *extra)


class _as:
    """Requests from this process to ``server`` with ``user``'s login in MLflow's own variables."""

    def __init__(self, server, user):
        self.url = server.url
        self.values = {"MLFLOW_TRACKING_USERNAME": user,
                       "MLFLOW_TRACKING_PASSWORD": PASSWORDS.get(user) or server.admin_password}

    def __enter__(self) -> MlflowClient:
        self.saved = {k: os.environ.get(k) for k in self.values}, mlflow.get_tracking_uri()
        os.environ.update(self.values)
        mlflow.set_tracking_uri(self.url)
        return MlflowClient()

    def __exit__(self, *exc):
        variables, uri = self.saved
        for k, v in variables.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        mlflow.set_tracking_uri(uri)


@pytest.fixture(scope="module")
def study(mlflow_auth_server, tmp_path_factory):
    """``access init`` by the admin, then a 2-trial study logged and registered by the user ``sweep``."""
    server, home = mlflow_auth_server, tmp_path_factory.mktemp("access")
    passwords = {f"LEGOEXP_PASSWORD_{u.upper()}": PASSWORDS[u] for u in access.INIT_USERS}
    [init] = _run(home, (_env(server, "admin", **passwords), "legoexp.access", "init", "--experiment", STUDY))
    assert init.returncode == 0, init.stderr
    [swept] = _run(home, (_env(server, "sweep"), *_sweep("--trials", "2")))
    assert swept.returncode == 0, swept.stderr[-3000:]
    with _as(server, "admin") as admin:
        experiment_id = admin.get_experiment_by_name(STUDY).experiment_id
        private = admin.create_experiment("private")  # the admin's own, granted to nobody
        private_run = admin.create_run(private).info.run_id
        admin.set_terminated(private_run)
        runs = admin.search_runs([experiment_id])
    parent = next(r.info.run_id for r in runs if r.data.tags["legoexp.kind"] == "sweep")
    trial = next(r.info.run_id for r in runs if r.data.tags["legoexp.kind"] == "trial")
    return SimpleNamespace(server=server, home=home, experiment_id=experiment_id, parent=parent, trial=trial,
                           private=private, private_run=private_run)


def _aliases(server):
    with _as(server, "admin") as admin:
        return {alias: str(v) for alias, v in admin.get_registered_model(MODEL).aliases.items()}


def _forbidden(call) -> MlflowException:
    with pytest.raises(MlflowException) as refused:
        call()
    assert refused.value.error_code == "PERMISSION_DENIED", refused.value
    return refused.value


def test_without_a_valid_login_the_server_answers_401_and_commands_say_what_to_set(study):
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{study.server.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
    assert anonymous.value.code == 401

    nobody, wrong = _run(study.home, (_env(study.server), *_sweep("--trials", "3", "--worker")),
                         (_env(study.server, "worker", "not-the-password"), "legoexp.reproduce", study.trial))
    _refused(nobody, "needs a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    _refused(wrong, "refused the login of user 'worker'")


def test_init_gives_each_role_its_rights_a_rerun_changes_nothing_and_only_an_admin_may_grant(study):
    server = study.server
    passwords = study.home / "passwords"
    passwords.mkdir()
    for user, mode in (("reader1", 0o600), ("outsider", 0o644)):
        (passwords / user).write_text(PASSWORDS[user] + "\n")
        (passwords / user).chmod(mode)
    as_admin = _env(server, "admin")
    again, reader, loose = _run(
        study.home, (as_admin, "legoexp.access", "init", "--experiment", STUDY),
        (as_admin, "legoexp.access", "grant", "reader1", "reader", "--experiment", STUDY, "--password-dir", passwords),
        (as_admin, "legoexp.access", "grant", "outsider", "reader", "--experiment", STUDY, "--password-dir", passwords))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("(kept)") == 5 and "created" not in again.stdout, again.stdout
    assert reader.returncode == 0 and "created user 'reader1'" in reader.stdout, reader.stderr
    _refused(loose, "passwords/outsider: mode 644 lets others read it")

    with _as(server, "admin"):
        admin = access.admin_client()
        for role, rights in ROLES.items():
            user = "reader1" if role == "reader" else role
            for kind, level in rights.items():
                resource = study.experiment_id if kind == "experiment" else MODEL
                assert admin.get_user_permission(user, kind, resource).permission == level, (user, kind)
        assert not access.user_exists(admin, "outsider")
    with _as(server, "sweep"), pytest.raises(AccessError, match="user 'sweep' is not an admin"):
        access.admin_client()


def test_a_worker_logs_trials_but_cannot_register_move_champion_delete_the_parent_or_read_elsewhere(study):
    server = study.server
    before = _aliases(server)
    worker = _env(server, "worker")
    worked, main_sweep, promoted, by_sweep = _run(
        study.home, (worker, *_sweep("--trials", "3", "--worker")),
        (worker, *_sweep("--trials", "4", "--study-name", "by-worker")),
        (worker, "legoexp.promote", "--force"),
        (_env(server, "sweep"), "legoexp.promote", "--force"))
    assert worked.returncode == 0, worked.stderr[-3000:]
    _refused(main_sweep, "user 'worker' may not register versions of model 'lego-classifier'",
             "it has NO_PERMISSIONS there; that needs EDIT", "grant worker sweep --experiment auth-study")
    _refused(promoted, "user 'worker' may not move the aliases of model 'lego-classifier'", "that needs MANAGE")
    _refused(by_sweep, "user 'sweep' may not move the aliases", "it has EDIT there; that needs MANAGE")

    with _as(server, "admin") as admin:
        runs = admin.search_runs([study.experiment_id])
    trials = [r for r in runs if r.data.tags["legoexp.kind"] == "trial"]
    assert sorted(r.data.tags["trial_number"] for r in trials) == ["0", "1", "2"]  # the worker's: trial 2
    assert not any(r.info.status == "RUNNING" for r in runs)
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(study.home / "optuna.journal")))
    assert optuna.get_all_study_names(journal) == [STUDY]  # the refused sweep made no study either
    assert _aliases(server) == before

    with _as(server, "admin") as admin:
        version = admin.get_model_version_by_alias(MODEL, "challenger")
    with _as(server, "worker") as client:
        _forbidden(lambda: client.create_model_version(MODEL, version.source, run_id=version.run_id))
        _forbidden(lambda: client.set_registered_model_alias(MODEL, "champion", version.version))
        deleting = _forbidden(lambda: client.delete_run(study.parent))
        assert str(refusal(deleting)).startswith("user 'worker' may not make the request /api/2.0/mlflow/runs/delete")
        _forbidden(lambda: client.get_experiment(study.private))
        _forbidden(lambda: client.get_run(study.private_run))
    assert _aliases(server) == before


def test_the_promoter_promotes_and_rolls_back(study):
    server = study.server
    start = _aliases(server)
    as_promoter = _env(server, "promoter")
    # the challenger over the baseline, then the baseline back over it: the sweep's comparison is
    # the evidence of both, so nothing is trained
    [first] = _run(study.home, (as_promoter, "legoexp.promote", "--force"))
    assert first.returncode == 0 and "evidence: comparison run" in first.stdout, first.stderr[-3000:]
    [second] = _run(study.home, (as_promoter, "legoexp.promote", "--version", start["baseline"], "--force"))
    assert second.returncode == 0 and "evidence: comparison run" in second.stdout, second.stderr[-3000:]
    assert _aliases(server) == start | {"champion": start["baseline"], "previous-champion": start["challenger"]}
    [back] = _run(study.home, (as_promoter, "legoexp.promote", "--rollback"))
    assert back.returncode == 0, back.stderr[-3000:]
    assert _aliases(server) == start | {"champion": start["challenger"], "previous-champion": start["baseline"]}

    # MLflow's rights are per model, not per alias: EDIT (the sweep's) may set any alias, @champion
    # too; only legoexp's promote insists on MANAGE. Set to where it is already, to show it.
    with _as(server, "sweep") as client:
        client.set_registered_model_alias(MODEL, "champion", start["challenger"])
        _forbidden(lambda: client.delete_registered_model_alias(MODEL, "champion"))


def test_predict_and_reproduce_work_with_a_readers_login_and_refuse_others(study, tmp_path):
    from legoexp.data import load_split, open_source

    images = tmp_path / "few.npz"
    split = load_split(open_source("synthetic"), "test")
    np.savez(images, images=split.images[:3], labels=split.labels[:3])
    model = f"models:/{MODEL}@challenger"
    reader, worker = _env(study.server, "reader1"), _env(study.server, "worker")
    predicted, refused, reproduced, elsewhere = _run(
        study.home, (reader, "legoexp.predict", "--model", model, images),
        (worker, "legoexp.predict", "--model", model, images),
        (reader, "legoexp.reproduce", study.trial),
        (worker, "legoexp.reproduce", study.private_run))
    assert predicted.returncode == 0 and "accuracy" in predicted.stdout, predicted.stderr[-3000:]
    _refused(refused, f"user 'worker' may not load model {model}")
    assert reproduced.returncode == 0 and "IDENTICAL" in reproduced.stdout, reproduced.stderr[-3000:]
    _refused(elsewhere, f"user 'worker' may not read run {study.private_run}")


# The table of the pre-checks. Each operation legoexp checks before it starts, tried as the check
# sees it and then for real, without the check, with the user's login (new names are new to the server):
OPERATIONS = {
    "runs": "log runs (params, metrics, tags, an artifact) in the experiment",
    "new-exp": "log runs in an experiment that does not exist yet (created by the try)",
    "models": "log a model in a run of the experiment (create, upload, finalize, link to the run)",
    "register": "register a version of the model from a logged model of the experiment, set an alias",
    "new-model": "the same into a model that does not exist yet (created by the try)",
    "aliases": "tag a version, set an alias, delete it (promote, and the undo of a half-done move)",
}
# pre-check verdict/server verdict; one word when they agree. no/yes: the check refuses what the
# server allows: a user who may not read a model cannot learn whether it exists (the server answers
# 403 either way), and the check refuses as if it did (docs/access-control.md)
VERDICTS = [
    # default_permission user          runs  new-exp  models  register  new-model  aliases
    ("NO_PERMISSIONS", "rt-sweep",    "yes   yes      yes     yes       no/yes     no"),
    ("NO_PERMISSIONS", "rt-worker",   "yes   yes      yes     no        no/yes     no"),
    ("NO_PERMISSIONS", "rt-promoter", "no    yes      no      no        no         yes"),
    ("NO_PERMISSIONS", "rt-reader",   "no    yes      no      no        no         no"),
    ("NO_PERMISSIONS", "rt-own",      "yes   yes      yes     no        no/yes     no"),
    ("NO_PERMISSIONS", "rt-tier",     "no    no       no      yes       no/yes     no"),
    ("READ",           "rt-sweep",    "yes   yes      yes     yes       yes        no"),
    ("READ",           "rt-worker",   "yes   yes      yes     no        yes        no"),
    ("READ",           "rt-promoter", "no    yes      no      no        no         yes"),
    ("READ",           "rt-reader",   "no    yes      no      no        no         no"),
    ("READ",           "rt-own",      "yes   yes      yes     no        yes        no"),  # the reported case
    ("READ",           "rt-tier",     "no    no       no      yes       yes        no"),
]
SEEN = {}  # (default_permission, user, operation): (pre-check, server, the check's refusal), for the printed table


def _table(server, home: Path) -> SimpleNamespace:
    """On ``server``: the table's experiment and model (with version 1, from a logged model of the
    experiment), made by the admin; its users with their rights (legoexp's roles by `access grant`)."""
    experiment, model = "rt-experiment", "rt-model"
    files = home / "model"
    files.mkdir()
    (files / "MLmodel").write_text("artifact_path: model\n")
    with _as(server, "admin") as client:
        for user, rights in TABLE_USERS.items():
            if rights.startswith("role "):
                os.environ[access.password_variable(user)] = PASSWORDS[user]
                try:
                    assert access.main(["grant", user, rights.removeprefix("role "), "--experiment", experiment,
                                        "--model-name", model]) == 0
                finally:
                    del os.environ[access.password_variable(user)]
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        admin = access.admin_client()
        for user in ("rt-own", "rt-tier"):
            admin.create_user(user, PASSWORDS[user])
            admin.grant_user_permission(user, "experiment", experiment_id, "EDIT")
        admin.grant_user_permission("rt-tier", "registered_model", model, "EDIT")
        admin.grant_user_permission("rt-tier", "run", "*", "READ")
        source = client.create_logged_model(experiment_id, name="source")
        client.log_model_artifacts(source.model_id, str(files))
        client.finalize_logged_model(source.model_id, LoggedModelStatus.READY)
        version = client.create_model_version(model, f"models:/{source.model_id}", model_id=source.model_id).version
    return SimpleNamespace(server=server, experiment=experiment, experiment_id=experiment_id, model=model,
                           version=str(version), source=f"models:/{source.model_id}", files=str(files))


@pytest.fixture(scope="module")
def read_server(tmp_path_factory):
    """A second server, with MLflow's default ``default_permission = READ`` (the issue's); it boots
    in the background while the first server's rows run (``.result()`` waits for it)."""
    from services import mlflow_auth_tracking_server  # once pytest_plugins has loaded it

    stack, pool = contextlib.ExitStack(), ThreadPoolExecutor(1)
    booting = pool.submit(stack.enter_context, mlflow_auth_tracking_server(tmp_path_factory, "READ"))
    yield booting
    wait([booting])
    pool.shutdown()
    stack.close()


@pytest.fixture(scope="module")
def table_no_permissions(mlflow_auth_server, read_server, tmp_path_factory):
    return _table(mlflow_auth_server, tmp_path_factory.mktemp("table"))


@pytest.fixture(scope="module")
def table_read(read_server, tmp_path_factory):
    return _table(read_server.result(timeout=300), tmp_path_factory.mktemp("table"))


def _pre_check(operation: str, table, new: str) -> None:
    rights = Rights.of_login()
    {"runs": lambda: rights.log_runs(table.experiment),
     "new-exp": lambda: rights.log_runs(new),
     "models": lambda: rights.log_models(table.experiment),
     "register": lambda: rights.register(table.model, table.experiment),
     "new-model": lambda: rights.register(new, table.experiment),
     "aliases": lambda: rights.move_aliases(table.model)}[operation]()


def _try(operation: str, client: MlflowClient, table, new: str) -> None:
    """The operation itself, as legoexp's commands make it, with no check before."""
    if operation in ("runs", "new-exp"):
        run = client.create_run(table.experiment_id if operation == "runs" else client.create_experiment(new))
        client.log_batch(run.info.run_id, metrics=[Metric("accuracy", 0.5, 0, 0)], params=[Param("lr", "0.1")],
                         tags=[RunTag("legoexp.kind", "trial")])
        client.log_text(run.info.run_id, "a plot", "plots/history.txt")
        client.set_terminated(run.info.run_id)
    elif operation == "models":
        run = client.create_run(table.experiment_id).info.run_id
        model = client.create_logged_model(table.experiment_id, source_run_id=run).model_id
        client.log_model_artifacts(model, table.files)
        client.finalize_logged_model(model, LoggedModelStatus.READY)
        client.log_outputs(run, [LoggedModelOutput(model, 0)])
        client.set_terminated(run)
    elif operation in ("register", "new-model"):
        register_once(table.source, new if operation == "new-model" else table.model, "challenger",
                      {"tried": new}, {"tried": new})
    else:
        client.set_model_version_tag(table.model, table.version, "promoted_at", new)
        client.set_registered_model_alias(table.model, new, table.version)
        client.delete_registered_model_alias(table.model, new)


@pytest.mark.parametrize("default, user, verdicts", VERDICTS, ids=[f"{d}-{u}" for d, u, _ in VERDICTS])
def test_each_pre_check_refuses_what_the_server_refuses_and_nothing_it_allows(default, user, verdicts, request):
    table = request.getfixturevalue(f"table_{default.lower()}")
    for operation, expected in zip(OPERATIONS, verdicts.split(), strict=True):
        new = f"rt-{uuid.uuid4().hex[:10]}"  # an experiment, model or alias name the server has not seen
        with _as(table.server, user) as client:
            try:
                _pre_check(operation, table, new)
                checked, why = "yes", ""
            except AccessError as e:
                checked, why = "no", str(e)
            try:
                _try(operation, client, table, new)
                served = "yes"
            except Exception as e:  # anything but the server's 401 or 403 fails the test
                if refusal(e) is None:
                    raise
                served = "no"
        SEEN[default, user, operation] = checked, served, why
        assert (checked if checked == served else f"{checked}/{served}") == expected, (operation, why)
        assert "\n" not in why
        if expected == "no/yes":  # the one thing it cannot know, and the refusal says what to do about it
            assert f"NO_PERMISSIONS also hides whether model {new!r} exists" in why, why


def test_the_issue_a_sweep_by_a_user_with_only_mlflows_grant_into_a_model_not_made_yet(table_read, table_no_permissions):
    """The sweep's own check (runs, models, register): with `default_permission = READ` the user sees
    that the model is not there yet, so it may create it; with NO_PERMISSIONS it cannot see, and is told how to find out."""
    new = f"rt-{uuid.uuid4().hex[:10]}"
    with _as(table_read.server, "rt-own"):
        check_sweep(table_read.experiment, new)
    with _as(table_no_permissions.server, "rt-own") as client:
        with pytest.raises(AccessError) as refused:
            check_sweep(table_no_permissions.experiment, new)
        assert str(refused.value).startswith(f"user 'rt-own' may not register versions of model {new!r} (it has "
                                             "NO_PERMISSIONS there; that needs EDIT): ask an admin for"), refused.value
        assert f"NO_PERMISSIONS also hides whether model {new!r} exists" in str(refused.value)
        # what the refusal suggests: creating the model tells whether it exists, and a new one is the user's
        with pytest.raises(MlflowException) as exists:
            client.create_registered_model(table_no_permissions.model)
        assert exists.value.error_code == "RESOURCE_ALREADY_EXISTS", exists.value
        client.create_registered_model(new)
        check_sweep(table_no_permissions.experiment, new)


def test_the_table_of_pre_checks_prints_for_a_note(capsys):
    """`pytest tests/test_access.py -k pre_check` prints it (pre-check / server; * where they differ)."""
    lines = [f"| default_permission | user | {' | '.join(OPERATIONS)} |", "|" + " --- |" * (len(OPERATIONS) + 2)]
    for default, user, _ in VERDICTS:
        seen = [SEEN.get((default, user, operation)) for operation in OPERATIONS]
        if any(seen):
            cells = ["-" if s is None else f"{s[0]} / {s[1]}" + (" *" if s[0] != s[1] else "") for s in seen]
            lines.append(f"| {default} | {user} | {' | '.join(cells)} |")
    with capsys.disabled():
        print("\n\n" + "\n".join(lines) + "\n\n" + "\n".join(f"- {op}: {what}" for op, what in OPERATIONS.items())
              + "\n- users: " + "; ".join(f"{u}: {r}" for u, r in TABLE_USERS.items()) + "\n")
    assert all(s[0] == s[1] or (s[0], s[1]) == ("no", "yes") for s in SEEN.values())


def test_no_password_is_in_any_output_param_tag_artifact_or_the_server_log(study, tmp_path):
    server = study.server
    hidden = [server.admin_password, *PASSWORDS.values()]
    texts = [*OUTPUTS, server.log.read_text(errors="replace")]
    with _as(server, "admin") as client:
        experiments = [e.experiment_id for e in client.search_experiments()]
        for run in client.search_runs(experiments):
            texts += [*run.data.params.values(), *run.data.tags.values()]
            texts += _files(client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
        for logged in client.search_logged_models(experiments):
            texts += _files(mlflow.artifacts.download_artifacts(f"models:/{logged.model_id}", tracking_uri=server.url,
                                                                dst_path=str(tmp_path / logged.model_id)))
        for version in client.search_model_versions(f"name='{MODEL}'"):
            texts += list(version.tags.values())
    assert len(OUTPUTS) >= 2 and len(texts) > 50  # run alone, it still sees the init and the sweep
    leaked = [text[:300] for text in texts if any(p in text for p in hidden)]
    assert not leaked


def _files(directory: str) -> list[str]:
    return [path.read_bytes().decode(errors="replace") for path in Path(directory).rglob("*") if path.is_file()]
