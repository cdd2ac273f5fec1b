"""``python -m legoexp.access init|grant``: the users of a tracking server with MLflow's basic-auth,
and the rights of their roles (``rights.ROLES``).

It runs with an admin's login in MLflow's own ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``. It creates the study's experiment and the registered model (as the
admin: whoever creates one owns it), the users (passwords from the environment or from files only
their owner can read, never from the command line) and their grants; it only creates what is
missing and raises rights below their role, so it can be rerun.
"""

import argparse
import os
import re
import warnings
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from legoexp import config
from legoexp.access.rules import ROLE_NAMES, ROLES, login, rank, refusal, server
from legoexp.errors import AccessError, UserError

INIT_USERS = ("sweep", "worker", "promoter")  # init: one user per role, named after it


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m legoexp.access",
        description="Set up who may do what on an `mlflow server --app-name basic-auth` (MLFLOW_TRACKING_URI), "
                    "as its admin (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD). Roles: "
                    + "; ".join(f"{role}: " + ", ".join(f"{level} on the {kind.replace('_', ' ')}"
                                                       for kind, level in rights.items())
                                for role, rights in ROLES.items()) + ".",
        epilog="A new user's password is read from the environment variable LEGOEXP_PASSWORD_<USER> (upper case, "
               "- as _) or from the file --password-dir/<user>, which only its owner may read; given for an "
               "existing user, it replaces the old one. Rights are only ever raised, never lowered; rerunning "
               "the command changes nothing that is already right. See docs/scale-out.md.")
    commands = p.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="the experiment, the model, and the users " + ", ".join(INIT_USERS)
                               + " with the roles of the same names")
    grant = commands.add_parser("grant", help="give USER (created if missing) the rights of ROLE")
    grant.add_argument("user", metavar="USER")
    grant.add_argument("role", metavar="ROLE", choices=ROLES, help=f"one of {ROLE_NAMES}")
    for command in (init, grant):
        command.add_argument("--experiment", required=True, help="the study's experiment (created if missing)")
        command.add_argument("--model-name", default=config.model_name(),
                             help=f"the registered model (created if missing; default {config.model_name()})")
        command.add_argument("--password-dir", type=Path, metavar="DIR",
                             help="a directory holding one file per user, named after it, with its password "
                                  "(e.g. a mounted Kubernetes secret)")
    return p.parse_args(argv)


def password_variable(user: str) -> str:
    return "LEGOEXP_PASSWORD_" + re.sub(r"\W", "_", user).upper()


def password(user: str, directory: Path | None) -> str | None:
    """``user``'s password from its environment variable or from ``directory/user``; None if neither."""
    if os.environ.get(password_variable(user)):
        return os.environ[password_variable(user)]
    path = directory / user if directory else None
    if path is None or not path.is_file():
        return None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise UserError(f"{path}: mode {mode:o} lets others read it; expected a file only its owner can read "
                        f"(chmod 600 {path})")
    return path.read_text().rstrip("\r\n")


def admin_client():
    """MLflow's basic-auth client, refused unless the login is an admin of a basic-auth server."""
    url = server()
    if url is None:
        raise UserError(f"MLFLOW_TRACKING_URI={mlflow.get_tracking_uri()}: users and rights live on a tracking "
                        "server; expected http(s)://HOST:PORT of an `mlflow server --app-name basic-auth`")
    with warnings.catch_warnings():  # the client imports the server app, which warns about its own imports
        warnings.simplefilter("ignore")
        from mlflow.server import get_app_client

        client = get_app_client("basic-auth", tracking_uri=url)
    try:
        is_admin = client.get_user(login()).is_admin
    except MlflowException as e:
        if e.error_code == "ENDPOINT_NOT_FOUND":
            raise UserError(f"the tracking server {url} has no basic-auth; start it with "
                            "`mlflow server --app-name basic-auth` (docs/scale-out.md)") from None
        raise refusal(e) or e from None
    if not is_admin:
        raise AccessError(f"user {login()!r} is not an admin of {url}: set MLFLOW_TRACKING_USERNAME and "
                          "MLFLOW_TRACKING_PASSWORD to an admin's login")
    return client


def ensure_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = client.create_experiment(name)
        print(f"created experiment {name!r} (id {experiment_id})")
        return experiment_id
    if experiment.lifecycle_stage != "active":
        raise UserError(f"experiment {name!r} is deleted; restore it (mlflow experiments restore "
                        f"--experiment-id {experiment.experiment_id}) or pass another --experiment")
    return experiment.experiment_id


def ensure_model(client: MlflowClient, name: str) -> None:
    """Created here, by the admin: whoever creates a registered model owns it (MANAGE)."""
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    else:
        print(f"created registered model {name!r}")


def user_exists(admin, user: str) -> bool:
    try:
        admin.get_user(user)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return False
    return True


def ensure_user(admin, user: str, secret: str | None) -> None:
    """Create ``user``, or give it ``secret`` as its new password; a user without one is kept as is."""
    exists = user_exists(admin, user)
    try:
        if not exists:
            admin.create_user(user, secret)
        elif secret is not None:
            admin.update_user_password(user, secret)
    except MlflowException as e:  # e.g. a password too short; the server's message holds no password
        raise UserError(f"user {user!r}: {e.message}") from None
    print(f"{'set the password of' if exists and secret else 'kept' if exists else 'created'} user {user!r}")


def ensure_permission(admin, user: str, kind: str, resource_id: str, level: str, label: str) -> None:
    """At least ``level`` for ``user``: a lower grant is replaced, a higher one kept."""
    have = admin.get_user_permission(user, kind, resource_id).permission
    if rank(have) >= rank(level):
        print(f"  {user}: {have} on {label} (kept)")
        return
    try:
        admin.grant_user_permission(user, kind, resource_id, level)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        admin.revoke_user_permission(user, kind, resource_id)
        admin.grant_user_permission(user, kind, resource_id, level)
    print(f"  {user}: {level} on {label} (was {have})")


def main(argv=None) -> int:
    args = parse_args(argv)
    users = {r: r for r in INIT_USERS} if args.command == "init" else {args.user: args.role}
    secrets = {user: password(user, args.password_dir) for user in users}
    admin = admin_client()
    for user, secret in secrets.items():  # all checked before anything is created
        if secret is None and not user_exists(admin, user):
            raise UserError(f"no password for the new user {user!r}: set {password_variable(user)} or put it in "
                            f"--password-dir DIR/{user}, a file only its owner can read")
    client = MlflowClient()
    resources = {"experiment": (ensure_experiment(client, args.experiment), f"experiment {args.experiment!r}"),
                 "registered_model": (args.model_name, f"registered model {args.model_name!r}")}
    ensure_model(client, args.model_name)
    for user, role in users.items():
        ensure_user(admin, user, secrets[user])
        for kind, level in ROLES[role].items():
            resource_id, label = resources[kind]
            ensure_permission(admin, user, kind, resource_id, level, label)
    return 0

