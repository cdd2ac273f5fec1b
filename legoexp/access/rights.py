"""What the login in ``MLFLOW_TRACKING_USERNAME`` may do on a tracking server with MLflow's
basic-auth, and the checks commands make before they create anything.

``rules.ROLES`` holds the least each job needs (NO_PERMISSIONS < READ < USE < EDIT < MANAGE), as
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
out (docs/access-control.md). A 401 or 403 that no check foresaw is worded by ``rules.refusal``.
On a local store or a server without basic-auth nothing is checked.
"""

import os

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from legoexp.access.rules import (
    ACTIONS,
    GRANTS_ENDPOINT,
    NEEDED,
    NEW,
    OVER,
    TIERS,
    WORKSPACE,
    Need,
    alias_needs,
    ask,
    login,
    meets,
    model_needs,
    permission,
    register_needs,
    run_needs,
)
from legoexp.errors import AccessError


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
        answer = ask(GRANTS_ENDPOINT)
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
