"""MLflow's basic-auth as a client can read it: permission levels, the roles legoexp grants, what each
request legoexp makes needs (MLflow 3.17's ``BEFORE_REQUEST_HANDLERS``), the login and the server,
what the server says of a login, and a server's refusal worded as one line.

``refusal`` words any 401 or 403 that no check foresaw (``ops.command.run_main`` uses it) as one
line naming the login and what was refused. ``access.rights`` resolves a login's rights from here.
"""


import os
import re
from typing import NamedTuple
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException

from legoexp.errors import AccessError

LEVELS = ("NO_PERMISSIONS", "READ", "USE", "EDIT", "MANAGE")  # MLflow's order, weakest first
ROLES = {
    "sweep": {"experiment": "EDIT", "registered_model": "EDIT"},  # the study's runs; @challenger, @baseline
    "worker": {"experiment": "EDIT"},  # trial runs, nothing in the registry
    "promoter": {"experiment": "READ", "registered_model": "MANAGE"},  # reads evidence and models; @champion
    "reader": {"experiment": "READ", "registered_model": "READ"},  # predict, reproduce, serving, the UI
}
# the endpoints behind AuthServiceClient.get_user_permission and the UI's list of the current
# user's grants; importing that client loads MLflow's whole server app (Flask, FastAPI: seconds),
# too much for a check every command makes
PERMISSION_ENDPOINT = "/api/3.0/mlflow/users/permissions/get"
GRANTS_ENDPOINT = "/api/3.0/mlflow/users/current/permissions"
WORKSPACE = "default"  # a server without workspaces keeps every grant in this one
ROLE_NAMES = ", ".join(ROLES)

ACTIONS = ("not denied", "read", "update", "delete")  # weakest first
NEEDED = {"not denied": "anything but DENY", "read": "READ", "update": "EDIT", "delete": "MANAGE"}
MODEL_VERSIONS = "registered_model_version"
TIERS = {"run": "every run", "logged_model": "every logged model", MODEL_VERSIONS: "every model version"}
OVER = {"run": "experiment", "logged_model": "experiment", MODEL_VERSIONS: "model"}  # whose grant a tier's overrides
NEW = ""  # the id of an experiment the command will create


class Need(NamedTuple):
    """``action`` on the key (``kind``, ``resource``), as one of MLflow's validators asks it; when
    the login holds no grant there, ``fallback`` decides (MLflow's ``fallback_if_no_grant``)."""

    kind: str
    resource: str
    action: str
    fallback: tuple[str, str] | None = None


def run_needs(experiment_id: str) -> list[Need]:
    e = ("experiment", experiment_id)
    return [Need(*e, "update"), Need("run", "*", "not denied"),  # CreateRun
            Need(*e, "read"), Need("run", "*", "update", e)]  # LogBatch, SetTag, UpdateRun, LogInputs, artifacts


def model_needs(experiment_id: str) -> list[Need]:
    """A logged model in a run of the login's (``mlflow.pyfunc.log_model``)."""
    e = ("experiment", experiment_id)
    return [*run_needs(experiment_id),
            Need("logged_model", "*", "not denied"), Need("run", "*", "read", e),  # CreateLoggedModel from a run
            Need("logged_model", "*", "update", e)]  # its artifacts, FinalizeLoggedModel, LogOutputs (+ the run's)


def register_needs(model: str, experiment_id: str | None) -> list[Need]:
    """A version from a logged model of ``experiment_id`` (``mlflow.register_model`` reads it and
    tags it), then an alias on it."""
    m, e = ("registered_model", model), ("experiment", experiment_id)
    source = [] if experiment_id is None else [Need(*e, "read"), Need("logged_model", "*", "update", e)]
    return [Need(*m, "update"), Need(MODEL_VERSIONS, "*", "not denied"),  # CreateModelVersion
            *source,  # ... from a logged model it reads (the validator) and tags (SetLoggedModelTags)
            Need(MODEL_VERSIONS, "*", "read", m)]  # SetRegisteredModelAlias (+ update on the model)


def alias_needs(model: str) -> list[Need]:
    """What ``registry.apply`` may do: tag versions, set aliases, and delete one when it undoes a
    half-done move (MLflow lets EDIT set an alias but only MANAGE delete one)."""
    m = ("registered_model", model)
    return [Need(*m, "read"), Need(MODEL_VERSIONS, "*", "update", m),  # SetModelVersionTag
            Need(*m, "update"), Need(MODEL_VERSIONS, "*", "read", m),  # SetRegisteredModelAlias
            Need(*m, "delete")]  # DeleteRegisteredModelAlias


def login() -> str:
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or ""


def rank(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else -1  # DENY: below everything


def meets(level: str, action: str) -> bool:
    return level != "DENY" if action == "not denied" else rank(level) >= rank(NEEDED[action])


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


def ask(endpoint: str, params: dict | None = None) -> dict | None:
    """The JSON answer of a basic-auth endpoint to the login; None when the tracking store has no
    basic-auth (a local store, or a server without it)."""
    url = server()
    if url is None:
        return None
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    response = http_request(get_default_host_creds(url), endpoint, "GET", params=params)
    try:
        verify_rest_response(response, endpoint)
    except MlflowException as e:
        if e.error_code == "ENDPOINT_NOT_FOUND":
            return None
        raise refusal(e) or e from None
    return response.json()


def permission(kind: str, resource_id: str) -> str | None:
    """The user's permission on an experiment (by id), a registered model (by name) or a tier
    (``run``, ``logged_model``, ``registered_model_version``; id ``*``), as the server resolves it for
    requests; None when the tracking store has no basic-auth."""
    answer = ask(PERMISSION_ENDPOINT, {"username": login(), "resource_type": kind, "resource_id": resource_id})
    return None if answer is None else answer["permission"]


