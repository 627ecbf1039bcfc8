"""Finding the references inside a resource (extensions and contained resources
included), e.g. to resolve `urn:uuid:` fullUrls in a transaction."""

from __future__ import annotations

import re
from typing import Any

# R4 `id`: what a resource id (and a version id) may be; anything else names nothing.
RESOURCE_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}", re.ASCII)


def iter_references(node: Any) -> list[dict[str, Any]]:
    """Every Reference-shaped object (a dict with a string `reference`) below node,
    in document order. Plain recursion: twice as fast as a generator over a stack,
    and this runs for every resource a transaction or import writes."""
    found: list[dict[str, Any]] = []
    append = found.append

    def walk_dict(obj: dict[str, Any]) -> None:
        if type(obj.get("reference")) is str:
            append(obj)
        for value in obj.values():
            kind = type(value)
            if kind is dict:
                walk_dict(value)
            elif kind is list:
                walk_list(value)

    def walk_list(items: list[Any]) -> None:
        for value in items:
            kind = type(value)
            if kind is dict:
                walk_dict(value)
            elif kind is list:
                walk_list(value)

    try:
        if type(node) is dict:
            walk_dict(node)
        elif type(node) is list:
            walk_list(node)
    except RecursionError:  # hostile nesting: the same walk without recursion
        return _references_iteratively(node)
    return found


def _references_iteratively(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            if type(item.get("reference")) is str:
                found.append(item)
            stack.extend(v for v in reversed(item.values()) if type(v) is dict or type(v) is list)
        elif type(item) is list:
            stack.extend(v for v in reversed(item) if type(v) is dict or type(v) is list)
    return found


def local_path(url: str, base: str | None) -> str | None:
    """url relative to this server's FHIR base (`Patient/1`), or None when url is not
    on it. The one rule for "is this absolute URL ours?" (R4 references.html#literal):
    extraction, search values and bundle fullUrls/references all ask here, so a
    reference to `http://other.example.org/fhir/Patient/1` is never our Patient/1.

    base is the server's base as the caller knows it (EHR_PUBLIC_BASE_URL, or the
    base the request came in on); None: no absolute URL is local. The comparison is
    exact (scheme, host, port and path as the base spells them)."""
    if base is None:
        return None
    prefix = base if base.endswith("/") else base + "/"
    if len(url) > len(prefix) and url.startswith(prefix):
        return url[len(prefix) :]
    return None
