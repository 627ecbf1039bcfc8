"""The R4 SearchParameters, indexed by resource type and code.

Expressions that are plain dotted paths (the large majority) are compiled to a list
of path segments so extraction is a dictionary walk, not a FHIRPath evaluation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from ..fhir.definitions import definitions

_SIMPLE_PATH = re.compile(r"^[A-Za-z]+(\.[a-z][A-Za-z0-9]*)+$")
# Bases that stand for every resource type (e.g. _id, _lastUpdated, _tag).
_ABSTRACT_BASES = ("Resource", "DomainResource")


@dataclass(frozen=True, slots=True)
class SearchParam:
    code: str
    type: str  # number | date | string | token | reference | composite | quantity | uri | special
    expression: str | None
    paths: tuple[tuple[str, ...], ...]  # compiled simple paths below the resource root
    url: str


def _paths_for(expression: str | None, resource_type: str) -> tuple[tuple[str, ...], ...]:
    if not expression:
        return ()
    out = []
    for part in expression.split("|"):
        part = part.strip()
        if not _SIMPLE_PATH.match(part):
            continue
        head, *rest = part.split(".")
        if head == resource_type or head in _ABSTRACT_BASES:
            out.append(tuple(rest))
    return tuple(out)


@cache
def search_params(resource_type: str) -> dict[str, SearchParam]:
    """Every SearchParameter applicable to resource_type, keyed by code."""
    out: dict[str, SearchParam] = {}
    for sp in definitions().search_parameters:
        bases = sp.get("base", [])
        if resource_type not in bases and not any(b in bases for b in _ABSTRACT_BASES):
            continue
        out[sp["code"]] = SearchParam(
            code=sp["code"],
            type=sp["type"],
            expression=sp.get("expression"),
            paths=_paths_for(sp.get("expression"), resource_type),
            url=sp["url"],
        )
    return out


@cache
def indexed_token_params(resource_type: str) -> tuple[SearchParam, ...]:
    """Token parameters whose values are extracted into search_token on write."""
    return tuple(
        p
        for p in search_params(resource_type).values()
        if p.type == "token" and p.paths and not p.code.startswith("_")
    )
