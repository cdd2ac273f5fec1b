"""The MLflow model registry: versions of ``lego-classifier``, their aliases, and the promotion gate.

``versions``: finding, registering and re-pointing versions, and ``apply``, which moves tags and
aliases together and undoes itself if a step fails (callers use the names below:
``registry.alias_version(...)``). ``gate``: the rule that ``promote`` applies to the evidence.
"""

from legoexp.registry.versions import alias_version, apply, find_version, get_version, model_aliases, register_once

__all__ = ["alias_version", "apply", "find_version", "get_version", "model_aliases", "register_once"]
