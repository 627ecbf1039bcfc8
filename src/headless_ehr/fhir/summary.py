"""_summary and _elements: the subsets of a resource a client can ask for.

R4 marks summary elements with `isSummary` in each StructureDefinition; mandatory
elements (min > 0) are always kept. A subsetted resource carries the SUBSETTED tag
(http://hl7.org/fhir/R4/search.html#summary).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from .definitions import definitions

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
    name = element["path"].split(".", 1)[1]
    if name.endswith("[x]"):
        stem = name[:-3]
        return [stem + t["code"][0].upper() + t["code"][1:] for t in element.get("type", [])]
    return [name]


@cache
def summary_names(resource_type: str) -> frozenset[str]:
    names = set(_ALWAYS)
    for element in _top_level(resource_type):
        if element.get("isSummary") or element.get("min", 0) > 0:
            names.update(_json_names(element))
    return frozenset(names)


@cache
def mandatory_names(resource_type: str) -> frozenset[str]:
    names = set(_ALWAYS)
    for element in _top_level(resource_type):
        if element.get("min", 0) > 0:
            names.update(_json_names(element))
    return frozenset(names)


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
        keep = summary_names(rtype)
        return _tagged({k: v for k, v in resource.items() if k in keep})
    if summary == "text":
        keep = set(mandatory_names(rtype)) | {"text"}
        return _tagged({k: v for k, v in resource.items() if k in keep})
    if summary == "data":
        return _tagged({k: v for k, v in resource.items() if k != "text"})
    return resource
