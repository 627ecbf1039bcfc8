"""Finding and rewriting references inside a resource (extensions and contained
resources included), e.g. to resolve `urn:uuid:` fullUrls in a transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def iter_references(node: Any) -> Iterator[dict[str, Any]]:
    """Every Reference-shaped object (a dict with a string `reference`) below node."""
    stack = [node]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            if type(item.get("reference")) is str:
                yield item
            stack.extend(v for v in item.values() if type(v) is dict or type(v) is list)
        elif type(item) is list:
            stack.extend(v for v in item if type(v) is dict or type(v) is list)


def rewrite_references(node: Any, rewrite: Callable[[str], str | None]) -> int:
    """Replace each reference string for which rewrite returns a value; returns the count."""
    changed = 0
    for ref in iter_references(node):
        new = rewrite(ref["reference"])
        if new is not None and new != ref["reference"]:
            ref["reference"] = new
            changed += 1
    return changed
