"""The SearchParameters in force, by resource type and code.

The R4 definitions are the base; SearchParameter resources stored on the server add
to them (they become searchable after $reindex). Expressions are kept per resource
type: of a shared expression (`Account.subject | Encounter.subject | ...`) only the
parts that apply to the type are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..fhir.definitions import definitions
from ..fhir.expressions import split_top_level

# Bases that stand for every resource type (e.g. _id, _lastUpdated, _tag).
ABSTRACT_BASES = ("Resource", "DomainResource")
# Parameters answered from the resource table itself, not from index rows.
COLUMN_PARAMS = frozenset({"_id", "_lastUpdated"})
# The one special parameter searched, indexed by hand: R4's `near` (Location.position).
NEAR_URL = "http://hl7.org/fhir/SearchParameter/Location-near"
# References indexed by hand under these names (no R4 SearchParameter; not searchable),
# for the access rules (search/access.py): a Binary's securityContext, and every
# Patient a stored Bundle names anywhere (by reference, or as an entry: id "" when it has none).
SECURITY_CONTEXT = "_securityContext"
BUNDLE_PATIENT = "_patient"
HAND_INDEXED = (SECURITY_CONTEXT, BUNDLE_PATIENT)


@dataclass(frozen=True, slots=True)
class Component:
    definition: str  # canonical URL of the component's SearchParameter
    expression: str  # relative to the composite's element


@dataclass(frozen=True, slots=True)
class SearchParam:
    code: str
    type: str  # number | date | string | token | reference | composite | quantity | uri | special
    expression: str | None  # only the parts that apply to resource_type
    url: str
    resource_type: str
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()


def _parts_for(expression: str | None, resource_type: str) -> str | None:
    """The union members of expression that start at resource_type (or are generic)."""
    if not expression:
        return None
    parts = []
    for part in _split_union(expression):
        head = re.match(r"^\(?\s*([A-Za-z]+)", part)
        name = head.group(1) if head else ""
        if name == resource_type or name in ABSTRACT_BASES or not name[:1].isupper():
            parts.append(part)
    return " | ".join(parts) if parts else None


def _split_union(expression: str) -> list[str]:
    """The members of a top-level union (`a | b.where(x='|')` gives two)."""
    return [p.strip() for p in split_top_level(expression, "|") if p.strip()]


def make_param(resource: dict[str, Any], resource_type: str) -> SearchParam:
    """A SearchParam from a SearchParameter resource, specialised to resource_type."""
    expression = _parts_for(resource.get("expression"), resource_type)
    return SearchParam(
        code=resource["code"],
        type=resource["type"],
        expression=expression,
        url=resource.get("url", ""),
        resource_type=resource_type,
        targets=tuple(resource.get("target", ())),
        components=tuple(
            Component(c.get("definition", ""), c.get("expression", "")) for c in resource.get("component", ())
        ),
    )


def applies_to(resource: dict[str, Any], resource_type: str) -> bool:
    bases = resource.get("base", [])
    return resource_type in bases or any(b in bases for b in ABSTRACT_BASES)


@cache
def base_search_params(resource_type: str) -> dict[str, SearchParam]:
    """The R4 specification's SearchParameters applicable to resource_type, by code."""
    return {
        sp["code"]: make_param(sp, resource_type)
        for sp in definitions().search_parameters
        if applies_to(sp, resource_type)
    }


@cache
def by_url() -> dict[str, dict[str, Any]]:
    """Every R4 SearchParameter resource by canonical URL (for composite components)."""
    return {sp["url"]: sp for sp in definitions().search_parameters}


class CustomParams:
    """SearchParameter resources registered on this server, shared by the process.

    `extracted` parameters get index rows on every write; `searchable` ones (those a
    finished $reindex covered) may also be used in queries.
    """

    def __init__(self) -> None:
        self.stamp: object = None
        self._extracted: dict[str, dict[str, SearchParam]] = {}
        self._searchable: dict[str, dict[str, SearchParam]] = {}
        # merged base+custom dicts, kept until the next replace() so that callers
        # caching work per dict (the extraction plans) see a stable object
        self.merged: dict[tuple[str, str], dict[str, SearchParam]] = {}

    def replace(self, definitions_: list[tuple[dict[str, Any], bool]], stamp: object) -> None:
        """Install (SearchParameter resource, searchable?) pairs."""
        extracted: dict[str, dict[str, SearchParam]] = {}
        searchable: dict[str, dict[str, SearchParam]] = {}
        for resource, ready in definitions_:
            for base in resource.get("base", ()):
                param = make_param(resource, base)
                extracted.setdefault(base, {})[param.code] = param
                if ready:
                    searchable.setdefault(base, {})[param.code] = param
        self._extracted, self._searchable, self.stamp = extracted, searchable, stamp
        self.merged = {}

    def extracted(self, resource_type: str) -> dict[str, SearchParam]:
        return self._extracted.get(resource_type, {})

    def searchable(self, resource_type: str) -> dict[str, SearchParam]:
        return self._searchable.get(resource_type, {})


CUSTOM = CustomParams()


def _merged(kind: str, resource_type: str, custom: dict[str, SearchParam]) -> dict[str, SearchParam]:
    base = base_search_params(resource_type)
    if not custom:
        return base
    key = (kind, resource_type)
    found = CUSTOM.merged.get(key)
    if found is None:
        found = CUSTOM.merged[key] = {**base, **custom}
    return found


def search_params(resource_type: str) -> dict[str, SearchParam]:
    """The parameters that queries on resource_type may use."""
    return _merged("searchable", resource_type, CUSTOM.searchable(resource_type))


def indexed_params(resource_type: str) -> dict[str, SearchParam]:
    """The parameters whose values are extracted when resource_type is written."""
    return _merged("extracted", resource_type, CUSTOM.extracted(resource_type))
