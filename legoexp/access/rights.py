"""What the login in ``MLFLOW_TRACKING_USERNAME`` may do on a tracking server with MLflow's
basic-auth: the roles legoexp's jobs need, the checks commands make before they create anything,
and a server's refusals worded as one line.

MLflow's basic-auth app checks every request against the login's permission on the experiment or
registered model it touches (NO_PERMISSIONS < READ < USE < EDIT < MANAGE; the server's
``default_permission`` where nothing is granted). ``ROLES`` holds the least each job needs, and the
``check_*`` functions ask the server for exactly those rights, so a login that lacks one learns it
at once, not after minutes of search. :func:`refusal` words any other 401 or 403 of the server
(``errors.run_main`` uses it) as one line naming the login and what was refused. On a local store
or a server without basic-auth nothing is checked.
"""

import os
import re
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from legoexp.errors import AccessError

LEVELS = ("NO_PERMISSIONS", "READ", "USE", "EDIT", "MANAGE")  # MLflow's order, weakest first
ROLES = {
    "sweep": {"experiment": "EDIT", "registered_model": "EDIT"},  # the study's runs; @challenger, @baseline
    "worker": {"experiment": "EDIT"},  # trial runs, nothing in the registry
    "promoter": {"experiment": "READ", "registered_model": "MANAGE"},  # reads evidence and models; @champion
    "reader": {"experiment": "READ", "registered_model": "READ"},  # predict, reproduce, serving, the UI
}
# the endpoint behind AuthServiceClient.get_user_permission; importing that client loads MLflow's
# whole server app (Flask, FastAPI: seconds), too much for a check every command makes
PERMISSION_ENDPOINT = "/api/3.0/mlflow/users/permissions/get"
ROLE_NAMES = ", ".join(ROLES)


def login() -> str:
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or ""


def rank(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else -1  # DENY: below everything


def server() -> str | None:
    """The tracking server's URL, or None for a local store (no logins there)."""
    uri = mlflow.get_tracking_uri()
    return uri if urlparse(uri).scheme in ("http", "https") else None


def refusal(error: BaseException, doing: str | None = None) -> AccessError | None:
    """A tracking server's 401 or 403 (an ``MlflowException``, or ``requests``' ``HTTPError`` from
    the artifact proxy) as one line naming the user and what was refused; None for other errors."""
    for e in (error, error.__cause__):
        response = getattr(e, "response", None)
        status = (e.get_http_status_code() if isinstance(e, MlflowException) else
                  getattr(response, "status_code", None))
        if status in (401, 403):
            break
    else:
        return None
    url, user = mlflow.get_tracking_uri(), login()
    if status == 401:
        if not user:
            return AccessError(f"the tracking server {url} needs a login: set MLFLOW_TRACKING_USERNAME and "
                               "MLFLOW_TRACKING_PASSWORD")
        return AccessError(f"the tracking server {url} refused the login of user {user!r}: check "
                           "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if doing is None:
        request = getattr(response, "request", None)
        named = (f"{request.method} {urlparse(request.url).path}" if request is not None else
                 (re.findall(r"endpoint (\S+)", str(e)) or ["a request"])[0])
        doing = f"make the request {named}"
    return AccessError(f"user {user!r} may not {doing} on {url} (403): a sweep needs EDIT on its experiment "
                       "and model, a worker EDIT on the experiment, promote MANAGE on the model, predict and "
                       "reproduce READ; ask an admin for `python -m legoexp.access grant "
                       f"{user or 'USER'} ROLE --experiment NAME` (roles: {ROLE_NAMES})")


def permission(kind: str, resource_id: str) -> str | None:
    """The user's permission on an experiment (by id) or registered model (by name), as the server
    resolves it for requests; None when the tracking store has no basic-auth."""
    url = server()
    if url is None:
        return None
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    response = http_request(get_default_host_creds(url), PERMISSION_ENDPOINT, "GET",
                            params={"username": login(), "resource_type": kind, "resource_id": resource_id})
    try:
        verify_rest_response(response, PERMISSION_ENDPOINT)
    except MlflowException as e:
        if e.error_code == "ENDPOINT_NOT_FOUND":  # a server without basic-auth
            return None
        raise refusal(e) or e from None
    return response.json()["permission"]


def require(kind: str, resource_id: str, level: str, doing: str, hint: str) -> None:
    """Refuse now if the server has basic-auth and the user's permission is below ``level``."""
    have = permission(kind, resource_id)
    if have is not None and rank(have) < rank(level):
        raise AccessError(f"user {login()!r} may not {doing} (it has {have} there; that needs {level}): {hint}")


def _grant_hint(role: str, experiment: str, instead: str) -> str:
    return (f"ask an admin for `python -m legoexp.access grant {login() or 'USER'} {role} --experiment "
            f"{experiment}`, or {instead}")


def _experiment_id(name: str, hint: str) -> str | None:
    """The id of experiment ``name``, None if there is none; refused if the user may not even read it."""
    try:
        experiment = MlflowClient().get_experiment_by_name(name)
    except MlflowException as e:
        if e.error_code != "PERMISSION_DENIED":
            raise
        raise AccessError(f"user {login()!r} may not read experiment {name!r} (it has NO_PERMISSIONS there; "
                          f"that needs READ): {hint}") from None
    return experiment.experiment_id if experiment else None


def check_sweep(experiment_name: str, model_name: str | None) -> None:
    """Before a sweep creates anything: may its user log runs in the experiment (if it exists yet),
    and (``model_name`` given: a main sweep, which may register the result after the search)
    register versions of the model?"""
    if server() is None:
        return
    role = "sweep" if model_name else "worker"
    hint = _grant_hint(role, experiment_name, f"run the {role} as a user who has it")
    if "MLFLOW_RUN_ID" not in os.environ:  # else `mlflow run` made the run, in an experiment of its user's
        experiment_id = _experiment_id(experiment_name, hint)
        if experiment_id is not None:
            require("experiment", experiment_id, ROLES[role]["experiment"],
                    f"log runs in experiment {experiment_name!r}", hint)
    if model_name:
        require("registered_model", model_name, ROLES[role]["registered_model"],
                f"register versions of model {model_name!r}", hint)


def check_promote(model_name: str) -> None:
    """Before promote or rollback reads anything: moving aliases, and undoing a half-done move, need
    MANAGE on the model (MLflow lets EDIT set an alias but only MANAGE delete one)."""
    if server() is not None:
        require("registered_model", model_name, ROLES["promoter"]["registered_model"],
                f"move the aliases of model {model_name!r}",
                _grant_hint("promoter", "EXPERIMENT", "run promote as a user with MANAGE on the model"))


def check_comparison(experiment_name: str) -> None:
    """Before promote trains a new comparison: may its run be logged in ``experiment_name`` (a new
    experiment is created, and owned, by whoever logs there first)?"""
    if server() is None:
        return
    hint = ("ask an admin for EDIT on it, or pass --experiment-name with an experiment of yours "
            "(a new name creates one)")
    experiment_id = _experiment_id(experiment_name, hint)
    if experiment_id is not None:
        require("experiment", experiment_id, "EDIT", f"log a comparison run in experiment {experiment_name!r}", hint)
