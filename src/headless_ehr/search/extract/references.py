"""What a reference points at: its type, id and version, or the URL it is kept as.

Used by the reference converter (index rows) and by `resolve()` in expressions
(`subject.where(resolve() is Patient)`), so both read a reference the same way.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, NamedTuple

from ...fhir.definitions import definitions
from ...fhir.references import RESOURCE_ID

# `Type/id[/_history/vid]` at the end of a relative or absolute reference (R4 3.1.3.3).
_TAIL = re.compile(
    rf"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>{RESOURCE_ID.pattern})"
    rf"(?:/_history/(?P<version>{RESOURCE_ID.pattern}))?$"
)
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


class Target(NamedTuple):
    type: str | None
    id: str | None
    version: str | None
    url: str | None  # absolute, canonical, urn: or '#contained' text; None when relative


@lru_cache(maxsize=1)
def _resource_types() -> frozenset[str]:
    return definitions().resource_types


@lru_cache(maxsize=8192)
def parse_reference(text: str) -> Target:
    """Split a reference string.

    `Patient/1/_history/2` → (Patient, 1, 2, None); `http://x/fhir/Patient/1` →
    (Patient, 1, None, the URL); `#p1`, `urn:uuid:…` and URLs that do not end in
    `Type/id` keep only their text.
    """
    if text.startswith("#"):
        return Target(None, None, None, text)
    absolute = _ABSOLUTE.match(text) is not None
    match = _TAIL.search(text)
    if match is None or match["type"] not in _resource_types():
        return Target(None, None, None, text)
    if not absolute and match.start() != 0:
        return Target(None, None, None, text)  # not `Type/id`: keep it as text
    return Target(match["type"], match["id"], match["version"], text if absolute else None)


@lru_cache(maxsize=4096)
def parse_canonical(text: str) -> Target:
    """A canonical/uri reference: `url|version` splits off the version; a trailing
    `Type/id` (as in `http://hl7.org/fhir/StructureDefinition/Patient`) gives the
    type and id too."""
    url, bar, version = text.partition("|")
    target = parse_reference(url)
    return Target(target.type, target.id, version if bar else target.version, target.url)


def reference_type(reference: Any, resource: dict[str, Any] | None) -> str | None:
    """The resource type a Reference points at, as FHIRPath `resolve()` would see it:
    from its `reference` (a `#id` finds the contained resource), else its `type`."""
    if not isinstance(reference, dict):
        return None
    text = reference.get("reference")
    if isinstance(text, str):
        if text.startswith("#") and resource is not None:
            for contained in resource.get("contained") or ():
                if isinstance(contained, dict) and contained.get("id") == text[1:]:
                    return contained.get("resourceType")
        else:
            found = parse_reference(text).type
            if found is not None:
                return found
    kind = reference.get("type")
    if isinstance(kind, str):
        return kind.rpartition("/")[2]  # `type` is a uri; core types are bare names
    return None
