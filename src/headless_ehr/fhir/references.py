"""Finding and rewriting references inside a resource (extensions and contained
resources included), e.g. to resolve `urn:uuid:` fullUrls in a transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def iter_references(node: Any) -> Iterator[dict[str, Any]]:
    """Every Reference-shaped object (a dict with a string `reference`) below node."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            yield node
        for value in node.values():
            if isinstance(value, dict | list):
                yield from iter_references(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                yield from iter_references(item)


def rewrite_references(node: Any, rewrite: Callable[[str], str | None]) -> int:
    """Replace each reference string for which rewrite returns a value; returns the count."""
    changed = 0
    for ref in iter_references(node):
        new = rewrite(ref["reference"])
        if new is not None and new != ref["reference"]:
            ref["reference"] = new
            changed += 1
    return changed
