"""_summary and _elements: the subsets of a resource a client can ask for.

R4 marks summary elements with `isSummary` in each StructureDefinition; mandatory
elements (min > 0) are always kept. `_summary=true` applies the rule inside backbone
elements too (a CapabilityStatement's summary keeps rest.resource.type but drops its
searchParam list); data types are kept whole. A subsetted resource carries the
SUBSETTED tag (http://hl7.org/fhir/R4/search.html#summary).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from .definitions import definitions
from .outcome import FhirError

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
_ALWAYS = ("resourceType", "id", "meta")


def _top_level(resource_type: str) -> list[dict[str, Any]]:
    sd = definitions().structure_definitions.get(resource_type, {})
    out = []
    for element in sd.get("snapshot", {}).get("element", []):
        path = element["path"]
        if path.count(".") == 1:
            out.append(element)
    return out


def _json_names(element: dict[str, Any]) -> list[str]:
    name = element["path"].rsplit(".", 1)[1]
    if name.endswith("[x]"):
        stem = name[:-3]
        return [stem + t["code"][0].upper() + t["code"][1:] for t in element.get("type", [])]
    return [name]


@cache
def mandatory_names(resource_type: str) -> frozenset[str]:
    names = set(_ALWAYS)
    for element in _top_level(resource_type):
        if element.get("min", 0) > 0:
            names.update(_json_names(element))
    return frozenset(names)


@cache
def _children(resource_type: str) -> dict[str, list[dict[str, Any]]]:
    """The snapshot's elements grouped by their parent path."""
    sd = definitions().structure_definitions.get(resource_type, {})
    out: dict[str, list[dict[str, Any]]] = {}
    for element in sd.get("snapshot", {}).get("element", []):
        path = element["path"]
        if "." in path:
            out.setdefault(path.rsplit(".", 1)[0], []).append(element)
    return out


@cache
def _summary_plan(resource_type: str, path: str) -> dict[str, str | None]:
    """JSON name -> the backbone path to prune inside it (None: keep the value whole)."""
    children = _children(resource_type)
    plan: dict[str, str | None] = {name: None for name in _ALWAYS} if path == resource_type else {}
    for element in children.get(path, ()):
        if not (element.get("isSummary") or element.get("min", 0) > 0):
            continue
        nested = None
        if element.get("contentReference"):
            nested = element["contentReference"].lstrip("#")
        elif element["path"] in children and any(
            t.get("code") in ("BackboneElement", "Element") for t in element.get("type", ())
        ):
            nested = element["path"]
        for name in _json_names(element):
            plan[name] = nested
    return plan


def _prune(value: dict[str, Any], resource_type: str, path: str) -> dict[str, Any]:
    plan = _summary_plan(resource_type, path)
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = key[1:] if key.startswith("_") else key  # `_birthDate` carries birthDate's id/extensions
        if name not in plan:
            continue
        nested = plan[name]
        if nested is not None and not key.startswith("_"):
            if isinstance(item, list):
                item = [_prune(i, resource_type, nested) if isinstance(i, dict) else i for i in item]
            elif isinstance(item, dict):
                item = _prune(item, resource_type, nested)
        out[key] = item
    return out


def _tagged(out: dict[str, Any]) -> dict[str, Any]:
    meta = dict(out.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(t.get("code") == "SUBSETTED" for t in tags if isinstance(t, dict)):
        tags.append(SUBSETTED)
    meta["tag"] = tags
    out["meta"] = meta
    return out


def subset(resource: dict[str, Any], summary: str | None, elements: list[str] | None) -> dict[str, Any]:
    """The resource reduced as _summary / _elements ask; unchanged when neither applies."""
    rtype = resource.get("resourceType", "")
    if elements:
        keep = set(mandatory_names(rtype)) | set(elements)
        return _tagged({k: v for k, v in resource.items() if k in keep})
    if summary == "true":
        return _tagged(_prune(resource, rtype, rtype))
    if summary == "text":
        keep = set(mandatory_names(rtype)) | {"text"}
        return _tagged({k: v for k, v in resource.items() if k in keep})
    if summary == "data":
        return _tagged({k: v for k, v in resource.items() if k != "text"})
    return resource


READ_SUMMARY_VALUES = ("true", "text", "data", "false")


def summary_arguments(
    summary: str | None, elements: str | None, allowed: tuple[str, ...] = READ_SUMMARY_VALUES
) -> tuple[str | None, list[str] | None]:
    """_summary and _elements of a read as subset() takes them; 400 for a value not in allowed."""
    if summary is not None and summary not in allowed:
        raise FhirError.of(400, "invalid", f"_summary must be one of {', '.join(allowed)}, got '{summary}'")
    names = [e.strip() for e in elements.split(",") if e.strip()] if elements is not None else None
    return summary, names or None


def is_subset(summary: str | None, elements: list[str] | None) -> bool:
    return bool(elements) or summary not in (None, "false")
