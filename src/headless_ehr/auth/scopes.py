"""SMART scopes (App Launch 2.2, scopes-and-launch-context.html) parsed into grants.

v1: `patient/Observation.read`, `user/*.write`, `system/*.*`.
v2: `patient/Observation.rs`, `user/*.cruds`, with optional search criteria:
`patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory`.
Anything else (`openid`, `fhirUser`, `launch/patient`, `offline_access`, …) is not a
resource grant and is kept as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from ..search.parse import RESULT_PARAMETERS

CONTEXTS = ("patient", "user", "system")
# interaction -> the SMART v2 permission letter it needs
PERMISSION = {
    "create": "c",
    "read": "r",
    "vread": "r",
    "history": "r",  # a resource's own history; type and system history are searches
    "search": "s",
    "update": "u",
    "patch": "u",
    "delete": "d",
}
_V1 = {"read": frozenset("rs"), "write": frozenset("cud"), "*": frozenset("cruds")}
_RESOURCE_SCOPE = re.compile(r"(patient|user|system)/(\*|[A-Z][A-Za-z]{0,63})\.([a-z*]{1,5})(?:\?(.*))?", re.S)
_V2_LETTERS = re.compile(r"c?r?u?d?s?")
MAX_SCOPES = 100  # a longer request is refused, not parsed
MAX_SCOPE_LENGTH = 1024


@dataclass(frozen=True)
class Grant:
    """One resource scope: who-context, type (`*` for all), permission letters, criteria."""

    context: str  # patient | user | system
    resource_type: str  # a type, or "*"
    permissions: frozenset[str]  # letters of "cruds"
    criteria: tuple[tuple[str, str], ...] = ()  # v2 search criteria, as query parameters
    text: str = ""

    def covers(self, permission: str, resource_type: str) -> bool:
        return permission in self.permissions and self.resource_type in ("*", resource_type)

    def within(self, other: Grant) -> bool:
        """Everything this grant allows, other allows too (for narrowing requests)."""
        return (
            self.context == other.context
            and other.resource_type in ("*", self.resource_type)
            and self.permissions <= other.permissions
            and (not other.criteria or set(other.criteria) <= set(self.criteria))
        )


class ScopeError(ValueError):
    """A scope string that is not well formed."""


def parse_grant(scope: str) -> Grant | None:
    """The grant a resource scope stands for; None for a scope that is not a resource scope."""
    if len(scope) > MAX_SCOPE_LENGTH:
        raise ScopeError(f"scope longer than {MAX_SCOPE_LENGTH} characters")
    m = _RESOURCE_SCOPE.fullmatch(scope)
    if m is None:
        if re.match(r"(patient|user|system)/", scope):
            raise ScopeError(f"malformed resource scope '{scope[:100]}'")
        return None
    context, rtype, access, query = m.groups()
    if access in _V1:
        if query:
            raise ScopeError(f"search criteria need a SMART v2 scope, not '{scope[:100]}'")
        permissions = _V1[access]
    elif _V2_LETTERS.fullmatch(access):
        permissions = frozenset(access)
    else:
        raise ScopeError(f"'{access}' is neither read/write/* nor SMART v2 letters in order (cruds)")
    criteria = tuple(parse_qsl(query, keep_blank_values=True)) if query else ()
    shaping = sorted({n for n, _ in criteria if n.split(":", 1)[0].split(".", 1)[0] in RESULT_PARAMETERS})
    if shaping:
        # criteria select rows; _count, _include, _sort… would only shape results, or widen them
        raise ScopeError(f"scope criteria may only be search parameters, not {', '.join(shaping)}")
    return Grant(context, rtype, permissions, criteria, scope)


def split_scopes(scope: str | None) -> list[str]:
    """The scope parameter as a list, in order and without repeats."""
    parts = list(dict.fromkeys((scope or "").split()))
    if len(parts) > MAX_SCOPES:
        raise ScopeError(f"more than {MAX_SCOPES} scopes")
    return parts


def grants_of(scopes: list[str]) -> tuple[Grant, ...]:
    return tuple(g for g in (parse_grant(s) for s in scopes) if g is not None)


def narrow(requested: list[str], allowed: list[str]) -> list[str]:
    """The requested scopes a client registered for `allowed` may have: a resource scope
    when an allowed one covers it; other scopes (openid, launch/patient, …) when listed."""
    allowed_grants = grants_of(allowed)
    allowed_other = {s for s in allowed if parse_grant(s) is None}
    granted = []
    for scope in requested:
        grant = parse_grant(scope)
        if grant is None:
            if scope in allowed_other:
                granted.append(scope)
        elif any(grant.within(a) for a in allowed_grants):
            granted.append(scope)
    return granted
