"""Value sets resolved to the exact set of codes a required binding allows.

Only value sets we can enumerate completely are resolved: the specification's
pre-computed expansion when it is complete, otherwise `compose` evaluated against
the CodeSystems we ship. A value set that draws on an external system as a whole
(SNOMED CT, LOINC, UCUM, BCP-13 mime types, BCP-47 languages, ISO currencies) or
uses a filter we cannot evaluate resolves to None, and its binding is not checked:
rejecting a valid code is worse than missing an invalid one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..definitions import Definitions

Resource = dict[str, Any]

_INCOMPLETE_EXPANSION = frozenset(
    {
        "http://hl7.org/fhir/StructureDefinition/valueset-toocostly",
        "http://hl7.org/fhir/StructureDefinition/valueset-unclosed",
    }
)


@dataclass(frozen=True, slots=True)
class CodeSet:
    """The codes of one value set: (system, code) pairs for Coding, bare codes for `code`."""

    url: str
    pairs: frozenset[tuple[str, str]]
    codes: frozenset[str]

    @classmethod
    def of(cls, url: str, pairs: Iterable[tuple[str, str]]) -> CodeSet:
        frozen = frozenset(pairs)
        return cls(url, frozen, frozenset(code for _, code in frozen))


class Unresolvable(Exception):
    """The value set cannot be enumerated from what we ship."""


class ValueSetResolver:
    """Resolves value set URLs to CodeSets, once each."""

    def __init__(self, defs: Definitions) -> None:
        self._defs = defs
        self._cache: dict[str, CodeSet | None] = {}
        self._hierarchies: dict[str, Hierarchy | None] = {}

    def hierarchy(self, system: str) -> Hierarchy | None:
        """The subsumption hierarchy of a CodeSystem we ship in full, or None."""
        if system not in self._hierarchies:
            try:
                self._hierarchies[system] = Hierarchy.of(self._complete_code_system(system))
            except Unresolvable:
                self._hierarchies[system] = None
        return self._hierarchies[system]

    def resolve(self, url: str) -> CodeSet | None:
        """The codes of the value set at `url` (a `|version` suffix is ignored), or None."""
        url = url.split("|", 1)[0]
        if url not in self._cache:
            try:
                self._cache[url] = CodeSet.of(url, self._pairs(url, ()))
            except Unresolvable:
                self._cache[url] = None
        return self._cache[url]

    def _pairs(self, url: str, stack: tuple[str, ...]) -> set[tuple[str, str]]:
        url = url.split("|", 1)[0]
        if url in stack:
            raise Unresolvable(f"value set {url} includes itself")
        cached = self._cache.get(url, False)
        if cached is None:
            raise Unresolvable(url)
        if cached is not False:
            return set(cached.pairs)
        value_set = self._defs.value_sets.get(url)
        if value_set is None:
            raise Unresolvable(f"unknown value set {url}")
        compose = value_set.get("compose")
        if not compose:
            raise Unresolvable(f"value set {url} has no compose")
        stack = (*stack, url)
        self._require_closed(compose, stack)
        expansion = self._expansion(url)
        if expansion is not None:
            return expansion
        result: set[tuple[str, str]] = set()
        for include in compose.get("include", []):
            result |= self._component(include, stack)
        for exclude in compose.get("exclude", []):
            result -= self._component(exclude, stack)
        return result

    def _require_closed(self, compose: Resource, stack: tuple[str, ...]) -> None:
        """Refuse value sets that draw on a code system we do not have in full."""
        for component in compose.get("include", []) + compose.get("exclude", []):
            system = component.get("system")
            if system is None and not component.get("valueSet"):
                raise Unresolvable("include without system or valueSet")
            if system is not None and not component.get("concept"):
                self._complete_code_system(system)
            for imported in component.get("valueSet", []):
                self._pairs(imported, stack)

    def _expansion(self, url: str) -> set[tuple[str, str]] | None:
        value_set = self._defs.expansions.get(url)
        if value_set is None:
            return None
        expansion = value_set.get("expansion", {})
        if any(ext.get("url") in _INCOMPLETE_EXPANSION for ext in expansion.get("extension", [])):
            return None
        pairs = {(c["system"], c["code"]) for c in _walk(expansion.get("contains", [])) if "code" in c}
        total = expansion.get("total")
        if total is not None and total != len(pairs):
            return None
        return pairs

    def _component(self, component: Resource, stack: tuple[str, ...]) -> set[tuple[str, str]]:
        """The codes of one compose.include or compose.exclude."""
        parts: list[set[tuple[str, str]]] = [self._pairs(u, stack) for u in component.get("valueSet", [])]
        system = component.get("system")
        if system is not None:
            if component.get("concept"):
                parts.append({(system, c["code"]) for c in component["concept"]})
            elif component.get("filter"):
                parts.append(self._filtered(system, component["filter"]))
            else:
                code_system = self._complete_code_system(system)
                parts.append({(system, c["code"]) for c in _walk(code_system.get("concept", []), "concept")})
        result = parts[0]
        for part in parts[1:]:
            result &= part
        return result

    def _complete_code_system(self, system: str) -> Resource:
        code_system = self._defs.code_systems.get(system)
        if code_system is None or code_system.get("content") != "complete":
            raise Unresolvable(f"code system {system} is not available in full")
        return code_system

    def _filtered(self, system: str, filters: list[Resource]) -> set[tuple[str, str]]:
        """Hierarchy filters (is-a, descendent-of, is-not-a) over a shipped CodeSystem."""
        concepts = self._complete_code_system(system).get("concept", [])
        codes = {c["code"] for c in _walk(concepts, "concept")}
        for flt in filters:
            if flt.get("property") != "concept":
                raise Unresolvable(f"filter on property {flt.get('property')}")
            below = _descendants(concepts, flt.get("value", ""))
            if below is None:
                raise Unresolvable(f"filter value {flt.get('value')} not in {system}")
            op = flt.get("op")
            if op == "is-a":
                codes &= below | {flt["value"]}
            elif op == "descendent-of":
                codes &= below
            elif op == "is-not-a":
                codes -= below | {flt["value"]}
            else:
                raise Unresolvable(f"filter operator {op}")
        return {(system, code) for code in codes}


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """A CodeSystem's is-a links: concept nesting and the `parent`/`child` properties."""

    parents: dict[str, frozenset[str]]
    children: dict[str, frozenset[str]]

    @classmethod
    def of(cls, code_system: Resource) -> Hierarchy:
        up: dict[str, set[str]] = {}
        down: dict[str, set[str]] = {}

        def link(child: str, parent: str) -> None:
            up.setdefault(child, set()).add(parent)
            down.setdefault(parent, set()).add(child)

        def visit(concepts: list[Resource], parent: str | None) -> None:
            for concept in concepts:
                code = concept.get("code")
                if not isinstance(code, str):
                    continue
                up.setdefault(code, set())
                if parent is not None:
                    link(code, parent)
                for prop in concept.get("property", []):
                    value = prop.get("valueCode")
                    if isinstance(value, str) and prop.get("code") in ("parent", "subsumedBy"):
                        link(code, value)
                    elif isinstance(value, str) and prop.get("code") == "child":
                        link(value, code)
                visit(concept.get("concept", []), code)

        visit(code_system.get("concept", []), None)
        return cls(
            {k: frozenset(v) for k, v in up.items()},
            {k: frozenset(v) for k, v in down.items()},
        )

    def __contains__(self, code: object) -> bool:
        return code in self.parents

    def closure(self, code: str, upwards: bool) -> set[str]:
        """code and everything it subsumes (downwards) or is subsumed by (upwards)."""
        links = self.parents if upwards else self.children
        seen, todo = {code}, [code]
        while todo:
            for other in links.get(todo.pop(), ()):
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
        return seen


_shared: dict[int, ValueSetResolver] = {}


def resolver_for(defs: Definitions) -> ValueSetResolver:
    """One resolver per Definitions, shared by validation and search, so each value set
    is expanded once per process."""
    found = _shared.get(id(defs))
    if found is None:
        found = _shared[id(defs)] = ValueSetResolver(defs)
    return found


def _walk(items: list[Resource], child_key: str = "contains") -> Iterator[Resource]:
    """Every entry of a nested contains/concept list, depth first."""
    for item in items:
        yield item
        yield from _walk(item.get(child_key, []), child_key)


def _descendants(concepts: list[Resource], code: str) -> set[str] | None:
    """Codes below `code` in a CodeSystem's concept tree, or None if `code` is absent."""
    for concept in _walk(concepts, "concept"):
        if concept.get("code") == code:
            return {c["code"] for c in _walk(concept.get("concept", []), "concept")}
    return None
