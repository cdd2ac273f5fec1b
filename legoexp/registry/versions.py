"""The MLflow model registry: versions of ``lego-classifier`` and their aliases.

Aliases, not the deprecated stages, say what a version is for: ``baseline`` (the lab's
configuration), ``challenger`` (the best configuration of the latest sweep), ``champion`` (the
one in use, moved only by ``legoexp.promote``) and ``previous-champion``. A version is
registered from a logged model's ``models:/m-...`` URI and carries tags with the evidence
behind it; :func:`apply` changes tags and aliases together, undoing itself if a step fails.
"""

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from legoexp.ops import faults


def alias_version(name: str, alias: str) -> str | None:
    """The version holding ``alias`` of registered model ``name``, or None (no such model or alias);
    a registry that fails raises."""
    return (model_aliases(name) or {}).get(alias)


def find_version(name: str, key: dict) -> str | None:
    """The version of ``name`` whose tags include all of ``key``, or None."""
    where = " and ".join([f"name = '{name}'"] + [f"tags.{k} = '{v}'" for k, v in key.items()])
    found = MlflowClient().search_model_versions(where)
    return str(found[0].version) if found else None


def register_once(model_uri: str, name: str, alias: str, tags: dict, key: dict) -> str:
    """Point ``alias`` of ``name`` at the version tagged with ``key``: one an interrupted earlier
    attempt registered, or a new one from ``model_uri`` with ``tags`` (which include ``key``)."""
    import mlflow

    version = find_version(name, key)
    if version is None:
        version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()}).version
        faults.point("report.registered")
    MlflowClient().set_registered_model_alias(name, alias, version)
    return str(version)


def model_aliases(name: str) -> dict[str, str] | None:
    """``{alias: version}`` of registered model ``name``; None when there is no such model."""
    try:
        model = MlflowClient().get_registered_model(name)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return {alias: str(version) for alias, version in model.aliases.items()}


def get_version(name: str, version: str):
    """Model version ``version`` of ``name`` (an MLflow ``ModelVersion``), or None."""
    try:
        return MlflowClient().get_model_version(name, str(version))
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def apply(name: str, tags: dict[str, dict], aliases: dict[str, str]) -> None:
    """Set ``tags`` ({version: {key: value}}), then point each alias at its version, in order.

    The registry has no transactions, so each step first records how to undo itself (the old
    tag value or alias target, or their absence); if any step fails, the recorded steps are
    undone newest first and the error is raised again: the registry is left as it was. Put the
    alias that commits the change last, so that even a process killed half-way (no undo) has
    either moved it or not.
    """
    client = MlflowClient()
    before = model_aliases(name) or {}
    undo = []
    try:
        for version, version_tags in tags.items():
            old = client.get_model_version(name, version).tags
            for key, value in version_tags.items():
                undo.append((client.set_model_version_tag, (name, version, key, old[key])) if key in old else
                            (client.delete_model_version_tag, (name, version, key)))
                client.set_model_version_tag(name, version, key, str(value))
                faults.point("registry.step")
        for alias, version in aliases.items():
            undo.append((client.set_registered_model_alias, (name, alias, before[alias])) if alias in before else
                        (client.delete_registered_model_alias, (name, alias)))
            client.set_registered_model_alias(name, alias, version)
            faults.point("registry.step")
    except BaseException as e:
        for step, args in reversed(undo):
            try:
                step(*args)
            except Exception as undo_error:  # keep going: restore as much as can be restored
                e.add_note(f"could not undo {step.__name__}{args}: {undo_error}")
        raise
