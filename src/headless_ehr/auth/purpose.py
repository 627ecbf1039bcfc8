"""Purpose of use: the v3-ActReason codes a token may carry (TREAT, ETREAT, BTG, …).

A client asks for them with `purpose_of_use` on the authorization and token requests;
they become the access token's `purpose_of_use` claim, Principal.purpose_of_use, the
`provision.purpose` that Consents match, and every AuditEvent's purposeOfEvent. BTG
(break-the-glass) is granted only to a user or client whose access policy has
`"breakTheGlass": true` (docs/security.md "Consent").
"""

from __future__ import annotations

from functools import cache

from ..fhir.definitions import definitions
from ..fhir.validation.valuesets import resolver_for
from .policies import Policies
from .principal import BREAK_THE_GLASS

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
MAX_PURPOSES = 10


class PurposeError(ValueError):
    """A purpose_of_use the server will not put on a token (OAuth invalid_request)."""


@cache
def _known() -> frozenset[str]:
    hierarchy = resolver_for(definitions()).hierarchy(ACT_REASON)
    return frozenset(hierarchy.parents) if hierarchy is not None else frozenset()


def parse_purposes(text: str | None) -> tuple[str, ...]:
    """The codes of a space-separated purpose_of_use parameter (none: ()); PurposeError
    for a code v3-ActReason lacks or more than MAX_PURPOSES codes."""
    codes = tuple(dict.fromkeys((text or "").split()))
    if len(codes) > MAX_PURPOSES:
        raise PurposeError(f"purpose_of_use may hold at most {MAX_PURPOSES} codes")
    unknown = [c for c in codes if c not in _known()]
    if unknown:
        raise PurposeError(f"purpose_of_use '{unknown[0][:64]}' is not a code of {ACT_REASON}")
    return codes


async def check_break_the_glass(policies: Policies | None, kind: str, subject: str, purposes: tuple[str, ...]) -> None:
    """PurposeError when BTG is asked for by a user or client (kind) whose access policies
    do not allow it."""
    if BREAK_THE_GLASS not in purposes:
        return
    if policies is None or not await policies.allows_break_the_glass(kind, subject):
        raise PurposeError("break-the-glass (purpose_of_use BTG) needs an access policy with breakTheGlass")
