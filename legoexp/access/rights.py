"""What the login in ``MLFLOW_TRACKING_USERNAME`` may do on a tracking server with MLflow's
basic-auth: the roles legoexp's jobs need, the checks commands make before they create anything,
and a server's refusals worded as one line.

``ROLES`` holds the least each job needs (NO_PERMISSIONS < READ < USE < EDIT < MANAGE), as
``python -m legoexp.access`` grants them. The checks do not compare a login's permission with a
role, though: they ask what MLflow's own validators (``mlflow/server/auth/__init__.py``,
``BEFORE_REQUEST_HANDLERS``, in MLflow 3.17) will ask of each request the command is going to
make, so that a check refuses exactly what the server would refuse. Each request needs an action
(read, update, delete, or only that nothing DENIES it) on a key: an experiment, a registered
model, or a whole tier (every run, every logged model, every model version), where a grant, if
the login holds one, decides before the experiment's or model's own (MLflow's
``fallback_if_no_grant``). The login's grants (``/users/current/permissions``) say which keys hold
one; the server's permission endpoint says what the server makes of a key (the grant, raised to
``default_permission``; ``default_permission`` where nothing is granted). Creating an experiment or
a registered model needs only that nothing DENIES it, and makes the creator its MANAGE owner.

One thing no login can learn beforehand: whether a registered model it may not read exists (the
server answers 403 either way). If it does not, the server lets anyone create it; if it does, the
login may not add versions. The check then refuses, as if the model existed, and says how to find
out (docs/access-control.md). :func:`refusal` words any 401 or 403 no check foresaw
(``errors.run_main`` uses it) as one line naming the login and what was refused. On a local store
or a server without basic-auth nothing is checked.
"""

import os
import re
from typing import NamedTuple
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


def _get(endpoint: str, params: dict | None = None) -> dict | None:
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
    answer = _get(PERMISSION_ENDPOINT, {"username": login(), "resource_type": kind, "resource_id": resource_id})
    return None if answer is None else answer["permission"]


class Rights:
    """The login's rights, resolved as the server resolves them for its requests. The checks raise
    an ``AccessError`` (one line: what, the permission it has and where, what that needs, ``hint``)."""

    def __init__(self, admin: bool, grants: list[tuple[str, str, str]]):
        self.admin, self.grants = admin, grants
        self.levels: dict[tuple[str, str], str] = {}
        self.owned: set[tuple[str, str]] = set()  # what the command will create, and then own
        self.labels: dict[tuple[str, str], str] = {("experiment", "*"): "every experiment"}
        self.experiments: dict[str, str] = {}

    @classmethod
    def of_login(cls) -> "Rights | None":
        """The rights of the login in MLflow's variables; None for a store without basic-auth."""
        answer = _get(GRANTS_ENDPOINT)
        if answer is None:
            return None
        grants = [(g["resource_type"], g["resource_pattern"], g["permission"]) for g in answer.get("permissions", [])
                  if g.get("workspace", WORKSPACE) == WORKSPACE]
        return cls(bool(answer.get("is_admin")) or ("workspace", "*", "MANAGE") in grants, grants)

    def holds(self, kind: str, resource: str) -> bool:
        """Whether the login holds a grant that applies to the key (a wildcard one too)."""
        return (kind, resource) in self.owned or any(k == kind and p in ("*", resource) for k, p, _ in self.grants)

    def level(self, kind: str, resource: str) -> str:
        if (kind, resource) in self.owned:
            return "MANAGE"
        if (kind, resource) not in self.levels:
            self.levels[kind, resource] = permission(kind, resource)
        return self.levels[kind, resource]

    def governing(self, need: Need) -> tuple[tuple[str, str], str]:
        """The key whose permission decides ``need``, and that permission: the first of the key and
        its fallback that holds a grant; with none, the server's ``default_permission``."""
        for key in ((need.kind, need.resource), need.fallback):
            if key is not None and self.holds(*key):
                return key, self.level(*key)
        key = need.fallback or (need.kind, need.resource)
        return key, self.level(*key)

    def require(self, doing: str, needs: list[Need], subject: tuple[str, str], hint: str) -> None:
        """Refuse unless every need is met; needs decided by the same key are named together, by the
        strongest action among them."""
        if self.admin:
            return
        decided: dict[tuple[str, str], tuple[str, str]] = {}
        for need in needs:
            key, level = self.governing(need)
            action = decided.get(key, (level, "not denied"))[1]
            decided[key] = level, max(action, need.action, key=ACTIONS.index)
        for key, (level, action) in decided.items():
            if not meets(level, action):
                where = "there" if key == subject else f"on {self.label(key)}"
                raise AccessError(f"user {login()!r} may not {doing} (it has {level} {where}; that needs "
                                  f"{NEEDED[action]})" + (f": {hint}" if hint else ""))

    def label(self, key: tuple[str, str]) -> str:
        kind, resource = key
        if kind in TIERS:
            return f"{TIERS[kind]}, a grant that decides before the {OVER[kind]}'s"
        return self.labels.get(key) or f"{kind.replace('_', ' ')} {resource!r}"

    def experiment(self, name: str, hint: str) -> str:
        """The id of experiment ``name``; ``NEW``, owned, when there is none yet and the login may
        create it (anyone not DENIED every experiment)."""
        if name not in self.experiments:
            try:
                found = MlflowClient().get_experiment_by_name(name)  # the server says which exist, to anyone
            except MlflowException as e:
                if e.error_code != "PERMISSION_DENIED":
                    raise
                raise AccessError(f"user {login()!r} may not read experiment {name!r} (it has no READ there)"
                                  + (f": {hint}" if hint else "")) from None
            if found is None:
                self.require(f"create experiment {name!r}", [Need("experiment", "*", "not denied")],
                             ("experiment", "*"), hint)
                self.owned.add(("experiment", NEW))
            self.experiments[name] = NEW if found is None else found.experiment_id
            self.labels["experiment", self.experiments[name]] = f"experiment {name!r}"
        return self.experiments[name]

    def model_exists(self, name: str) -> bool | None:
        """Whether registered model ``name`` exists; None when the login may not read it, which
        hides that (403 either way)."""
        if not meets(self.level("registered_model", name), "read"):
            return None
        try:
            MlflowClient().get_registered_model(name)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def log_runs(self, experiment: str, hint: str = "") -> None:
        experiment_id = self.experiment(experiment, hint)
        self.require(f"log runs in experiment {experiment!r}", run_needs(experiment_id),
                     ("experiment", experiment_id), hint)

    def log_models(self, experiment: str, hint: str = "") -> None:
        experiment_id = self.experiment(experiment, hint)
        self.require(f"log models in experiment {experiment!r}", model_needs(experiment_id),
                     ("experiment", experiment_id), hint)

    def register(self, model: str, experiment: str | None, hint: str = "") -> None:
        """Versions of ``model`` from logged models of ``experiment`` (None: not checked), each with an
        alias; a model that does not exist yet is created, and then owned."""
        m = ("registered_model", model)
        self.labels[m] = f"model {model!r}"
        experiment_id = None if experiment is None else self.experiment(experiment, hint)
        exists = self.model_exists(model)
        if exists is False:
            self.require(f"create registered model {model!r}", [Need(*m, "not denied")], m, hint)
            self.owned.add(m)
        elif exists is None and self.level(*m) != "DENY":
            # what would be refused even if the model were new is refused either way: that first
            self.owned.add(m)
            try:
                self.require(f"register versions of model {model!r}", register_needs(model, experiment_id), m, hint)
            finally:
                self.owned.discard(m)
            hint += ("; " if hint else "") + (
                f"{self.level(*m)} also hides whether model {model!r} exists: if it does not yet, anyone may create "
                f"it, and then owns it (python -c \"import mlflow; mlflow.MlflowClient().create_registered_model("
                f"'{model}')\")")
        self.require(f"register versions of model {model!r}", register_needs(model, experiment_id), m, hint)

    def move_aliases(self, model: str, hint: str = "") -> None:
        """Nothing to check when there is no such model: the command says so."""
        m = ("registered_model", model)
        self.labels[m] = f"model {model!r}"
        if self.model_exists(model) is not False:
            self.require(f"move the aliases of model {model!r}", alias_needs(model), m, hint)


def _grant_hint(role: str, experiment: str, instead: str) -> str:
    return (f"ask an admin for `python -m legoexp.access grant {login() or 'USER'} {role} --experiment "
            f"{experiment}`, or {instead}")


def check_sweep(experiment_name: str, model_name: str | None) -> None:
    """Before a sweep creates anything: may its user log runs (and, with ``model_name``: a main
    sweep, the comparison's models) in the experiment, created if missing, and register versions of
    the model, created if missing, after the search?"""
    rights = Rights.of_login()
    if rights is None:
        return
    role = "sweep" if model_name else "worker"
    hint = _grant_hint(role, experiment_name, f"run the {role} as a user who has it")
    launched = "MLFLOW_RUN_ID" in os.environ  # then `mlflow run` made the run, in an experiment of its user's
    if not launched:
        rights.log_runs(experiment_name, hint)
        if model_name:
            rights.log_models(experiment_name, hint)
    if model_name:
        rights.register(model_name, None if launched else experiment_name, hint)


def check_promote(model_name: str) -> None:
    """Before promote or rollback reads anything: moving aliases, and undoing a half-done move, need
    MANAGE on the model (MLflow lets EDIT set an alias but only MANAGE delete one)."""
    rights = Rights.of_login()
    if rights is not None:
        rights.move_aliases(model_name, _grant_hint("promoter", "EXPERIMENT",
                                                    "run promote as a user with MANAGE on the model"))


def check_comparison(experiment_name: str) -> None:
    """Before promote trains a new comparison: may its run and models be logged in
    ``experiment_name`` (a new experiment is created, and owned, by whoever logs there first)?"""
    rights = Rights.of_login()
    if rights is None:
        return
    hint = ("ask an admin for EDIT on it, or pass --experiment-name with an experiment of yours "
            "(a new name creates one)")
    rights.log_runs(experiment_name, hint)
    rights.log_models(experiment_name, hint)
