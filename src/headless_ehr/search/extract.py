"""Index values extracted from a resource at write time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .registry import indexed_token_params


def walk(node: Any, path: tuple[str, ...]) -> Iterator[Any]:
    """Every value at the dotted path below node, flattening arrays as FHIRPath does."""
    if not path:
        if isinstance(node, list):
            yield from node
        elif node is not None:
            yield node
        return
    if isinstance(node, list):
        for item in node:
            yield from walk(item, path)
        return
    if isinstance(node, dict):
        child = node.get(path[0])
        if child is not None:
            yield from walk(child, path[1:])


def _token_values(value: Any) -> Iterator[tuple[str | None, str | None]]:
    """(system, code) pairs of a token-typed element."""
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if "coding" in value or "text" in value:  # CodeableConcept
            for coding in value.get("coding") or ():
                if isinstance(coding, dict) and coding.get("code") is not None:
                    yield coding.get("system"), str(coding["code"])
        elif "value" in value and "code" not in value:  # Identifier, ContactPoint
            if value.get("value") is not None:
                yield value.get("system"), str(value["value"])
        elif value.get("code") is not None:  # Coding, Quantity-like
            yield value.get("system"), str(value["code"])


TokenRow = tuple[str, str | None, str | None]


def token_rows(resource: dict[str, Any]) -> list[TokenRow]:
    """(param, system, code) rows for every indexed token parameter of the resource."""
    rows: set[TokenRow] = set()
    for param in indexed_token_params(resource["resourceType"]):
        for path in param.paths:
            for value in walk(resource, path):
                for system, code in _token_values(value):
                    rows.add((param.code, system, code))
    return sorted(rows, key=lambda r: (r[0], r[1] or "", r[2] or ""))


def extract(resource: dict[str, Any]) -> Any:
    """Interim: token rows only (replaced by the search.extract package)."""
    from .rows import IndexRows

    return IndexRows(token=[(p, s, c, None) for p, s, c in token_rows(resource)])
