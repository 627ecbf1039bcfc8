"""Reference.reference strings: well-formedness and the target types an element allows.

Forms accepted (R4 references.html): `Type/id`, `Type/id/_history/vid`, an absolute
URL, `#id` naming a contained resource of the same container (`#` alone is the
container itself), `urn:uuid:` and `urn:oid:`, and, inside transaction and batch
Bundles only, a conditional reference `Type?search`. Only relative references are
checked against the element's target types: an absolute URL may name anything.
"""

from __future__ import annotations

import re
from collections.abc import Set
from dataclasses import dataclass

_RELATIVE = re.compile(
    r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?",
    re.ASCII,
)
_CONDITIONAL = re.compile(r"(?P<type>[A-Z][A-Za-z]+)\?\S*", re.ASCII)
_UUID = re.compile(r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_OID = re.compile(r"urn:oid:[0-2](?:\.(?:0|[1-9][0-9]*))+", re.ASCII)
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+", re.ASCII)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+", re.ASCII)


@dataclass(frozen=True, slots=True)
class ReferenceProblem:
    """What is wrong with a reference string, with its R4 issue-type code."""

    code: str
    message: str


def check_reference(
    reference: str,
    *,
    targets: Set[str] | None,
    resource_types: Set[str],
    contained_ids: Set[str] | None,
    allow_conditional: bool,
) -> ReferenceProblem | None:
    """None when `reference` is acceptable for an element allowing `targets` (None: any)."""
    if reference.startswith("#"):
        if reference == "#" or (contained_ids is not None and reference[1:] in contained_ids):
            return None
        return ReferenceProblem("not-found", f"local reference {reference!r} names no contained resource")
    if reference.startswith("urn:"):
        if reference.startswith("urn:uuid:"):
            ok = _UUID.fullmatch(reference) is not None
        elif reference.startswith("urn:oid:"):
            ok = _OID.fullmatch(reference) is not None
        else:
            ok = _ABSOLUTE.fullmatch(reference) is not None
        return None if ok else ReferenceProblem("invalid", f"{reference!r} is not a valid URN")
    match = _RELATIVE.fullmatch(reference)
    if match is None and allow_conditional:
        match = _CONDITIONAL.fullmatch(reference)
    if match is not None:
        type_name = match["type"]
        if type_name not in resource_types:
            return ReferenceProblem("invalid", f"reference {reference!r} names an unknown resource type {type_name!r}")
        if targets is not None and type_name not in targets:
            allowed = ", ".join(sorted(targets))
            return ReferenceProblem("structure", f"a reference to {type_name} is not allowed here (allowed: {allowed})")
        return None
    if _URL.fullmatch(reference) is not None:
        return None
    return ReferenceProblem(
        "invalid",
        f"{reference!r} is not a valid reference: expected Type/id, Type/id/_history/vid, "
        "an absolute URL, #contained-id, urn:uuid: or urn:oid:",
    )
