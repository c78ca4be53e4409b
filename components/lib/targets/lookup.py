"""Find a registered model version from what a person types: ``MODEL[@VERSION|@ALIAS]``.

``MODEL`` is a display name (``beer-classifier``), a model id, or a resource name
(``projects/P/locations/L/models/M``); after ``@`` comes a version id (``3``) or an alias
(``champion``); without it, the ``default`` alias (the newest upload), as Vertex AI reads it.
"""

from __future__ import annotations

from components.lib.targets.base import DEFAULT_ALIAS, VERTEX, ModelVersion, resource_id
from components.lib.targets.local import ModelRegistry


def split_reference(reference: str) -> tuple[str, str]:
    """``"beer-classifier@3"`` -> ``("beer-classifier", "3")``; no ``@``: the default alias."""
    name, _, version = reference.strip().partition("@")
    if not name or "@" in version:
        raise ValueError(f"model {reference!r}: write MODEL, MODEL@VERSION or MODEL@ALIAS")
    return name, version or DEFAULT_ALIAS


def resolve_local(state_dir: str, reference: str) -> ModelVersion:
    """The local registry's version named by ``reference``; KeyError says what exists."""
    name, wanted = split_reference(reference)
    model_id = name.rsplit("/", 1)[-1] if name.startswith("projects/") else resource_id(name)
    registry = ModelRegistry(state_dir, "", "")
    record = registry.get_model(model_id)
    if record is None:
        raise KeyError(f"no model {name!r} in the local registry at {state_dir}")
    for version in record["versions"]:
        if wanted == version["versionId"] or wanted in version["versionAliases"]:
            return registry.get_version(record["name"], version["versionId"])
    known = ", ".join("@".join([v["versionId"], *v["versionAliases"]]) for v in record["versions"])
    raise KeyError(f"{name} has no version or alias {wanted!r} (versions: {known})")


def resolve_version(
    target: str, state_dir: str, project: str, location: str, reference: str
) -> ModelVersion:
    """The version named by ``reference`` in ``target``'s registry."""
    if target == VERTEX:
        from components.lib.targets.vertex_batch import resolve_vertex

        model = resolve_vertex(project, location, reference)
        return ModelVersion(
            model.resource_name, model.version_id, model.display_name, model.uri or ""
        )
    return resolve_local(state_dir, reference)
