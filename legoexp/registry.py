"""The MLflow model registry: versions of ``lego-classifier`` and their aliases.

Aliases, not the deprecated stages, say what a version is for: ``baseline`` (the lab's
configuration), ``challenger`` (the best configuration of the latest sweep), and later
``champion``. A version is registered from a logged model's ``models:/m-...`` URI and carries
tags with the evidence behind it.
"""

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient


def alias_version(name: str, alias: str) -> str | None:
    """The version holding ``alias`` of registered model ``name``, or None."""
    try:
        return MlflowClient().get_model_version_by_alias(name, alias).version
    except MlflowException:
        return None


def register(model_uri: str, name: str, alias: str, tags: dict) -> str:
    """Register ``model_uri`` as a new version of ``name``, tag it, point ``alias`` at it."""
    import mlflow

    client = MlflowClient()
    version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()}).version
    client.set_registered_model_alias(name, alias, version)
    return version
