"""Conditional criteria: the search that picks the target of a conditional interaction.

Conditional create (If-None-Exist), update, patch and delete, a transaction's
ifNoneExist and conditional entries, and `Type?criteria` references all match on
search parameters alone (http://hl7.org/fhir/R4/http.html#cond-update). A result
parameter (`_count`, `_summary`, `_sort`, ...) changes how many resources a search
returns, not which resources match, so honouring it would let `_count=1` turn
"several match" into "one matches"; it is refused instead. Every path parses its
criteria here, so REST and bundles cannot drift apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from ..fhir.outcome import FhirError
from ..fhir.references import local_path
from .parse import RESULT_PARAMETERS

# How to render the response, not what to match: allowed on any URL and dropped.
_RENDERING = frozenset({"_format", "_pretty"})


@dataclass(frozen=True, slots=True)
class Criteria:
    """Validated criteria of a conditional interaction, in canonical order."""

    resource_type: str
    params: tuple[tuple[str, str], ...]  # sorted by (name, value); the search ANDs them either way
    what: str  # the interaction, for messages: create, update, delete, patch, reference

    @property
    def canonical(self) -> str:
        """`Type?a=1&b=2`, the same text for every spelling of the same criteria."""
        return f"{self.resource_type}?{urlencode(self.params, safe=':|/,')}"

    @property
    def lock_key(self) -> int:
        """A signed 64-bit key for pg_advisory_xact_lock, from the canonical criteria."""
        digest = hashlib.blake2b(b"conditional:" + self.canonical.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def lock_key_on(self, base: str | None) -> int:
        """lock_key with every value under FHIR base `base` spelled relative: the search
        reads `subject=<base>/Patient/1` as `subject=Patient/1`, so both spellings must
        take one lock. Non-reference values are rewritten too; at worst two different
        criteria then share a lock, which costs waiting, never a duplicate."""
        if base is None:
            return self.lock_key
        params = []
        for name, value in self.params:
            parts = [local_path(v, base) or v for v in value.split(",")]
            params.append((name, ",".join(parts)))
        return Criteria(self.resource_type, tuple(sorted(params)), self.what).lock_key


def conditional_criteria(resource_type: str, query: str | Iterable[tuple[str, str]], what: str) -> Criteria:
    """Parse and check the criteria of a conditional interaction; 400 when unusable.

    query is a query string (optionally `Type?...`, as in If-None-Exist or a
    conditional reference) or already split (name, value) pairs (a request's URL).
    Unknown parameters and malformed values are refused later by the strict search.
    """
    if isinstance(query, str):
        prefix, mark, rest = query.partition("?")
        if mark:
            named = prefix.rsplit("/", 1)[-1]
            if named and named != resource_type:
                raise FhirError.of(
                    400, "invalid", f"conditional {what}: criteria '{query}' are not for {resource_type}"
                )
            query = rest
        pairs = parse_qsl(query, keep_blank_values=True)
    else:
        pairs = list(query)
    params: list[tuple[str, str]] = []
    refused: list[str] = []
    for name, value in pairs:
        base = name.split(":", 1)[0].split(".", 1)[0]  # as the search parser reads it
        if base in _RENDERING:
            continue
        if base in RESULT_PARAMETERS:
            refused.append(name)
        else:
            params.append((name, value))
    if refused:
        raise FhirError.of(
            400,
            "invalid",
            f"conditional {what} matches on search parameters alone;"
            f" result parameter(s) not allowed: {', '.join(sorted(set(refused)))}",
        )
    if not params:
        raise FhirError.of(400, "invalid", f"conditional {what} needs search criteria")
    return Criteria(resource_type, tuple(sorted(params)), what)
