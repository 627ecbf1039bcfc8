"""Version ETags (R4 http.html#versioning): `W/"3"`, lists of them, and `*`.

One parser for every place a client names versions: the If-Match and If-None-Match
headers and a Bundle entry's `request.ifMatch` / `ifNoneMatch`. RFC 9110 §13.1.1:
`*` matches any current representation; a list matches when any member does.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from ..fhir.outcome import FhirError

ANY: Final = "*"
Versions = frozenset[int] | Literal["*"]

# A version id is digits; quotes are optional (some clients drop them), weakness is
# ignored. Up to 18 digits parse: a well-formed tag for a version that cannot exist
# simply does not match.
_ETAG = re.compile(r'\s*(?:W/)?"?([0-9]{1,18})"?\s*', re.ASCII)


def parse_etags(value: str, header: str) -> Versions:
    """The versions an If-Match / If-None-Match value names; 400 when malformed."""
    if value.strip() == ANY:
        return ANY
    versions = set()
    for part in value.split(","):
        if not part.strip():
            continue  # RFC 9110 list syntax allows empty elements
        match = _ETAG.fullmatch(part)
        if match is None:
            raise FhirError.of(
                400, "invalid", f"malformed {header} '{value[:100]}' (expected W/\"n\", a list of them, or *)"
            )
        versions.add(int(match.group(1)))
    if not versions:
        raise FhirError.of(400, "invalid", f"{header} names no version")
    return frozenset(versions)


def matches(wanted: Versions | int, version: int) -> bool:
    """Whether the current `version` satisfies the versions a precondition names."""
    if wanted == ANY:
        return True
    if type(wanted) is int:
        return wanted == version
    return version in wanted  # type: ignore[operator]


def describe(wanted: Versions | int) -> str:
    if wanted == ANY or type(wanted) is int:
        return str(wanted)
    return ", ".join(str(v) for v in sorted(wanted))  # type: ignore[union-attr]
