"""A Subscription's owner: whose rights match its events and filter its payloads.

The owner is whoever created or last changed the Subscription (never the server's own
status changes, events/lifecycle.py). Its token's claims are kept in
`subscription_state.owner` and turned back into a Principal by the same code that reads
a verified token (auth/tokens.py `principal_of`), then given the subject's current
access policy (auth/policies.py), so a policy or Consent changed since applies at once.
A Subscription keeps its creator's rights after the token expires (docs/events.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..auth.policies import Policies
from ..auth.principal import SYSTEM, Principal
from ..auth.tokens import principal_of


def owner_claims(principal: Principal) -> dict[str, Any]:
    """What to keep of the principal (JSON): its token's claims; {"system": true} for the server's own."""
    if principal.grants is None:
        return {"system": True}
    claims: dict[str, Any] = {"sub": principal.subject, "scope": principal.scope}
    optional = {
        "client_id": principal.client_id,
        "fhirUser": principal.fhir_user,
        "patient": principal.patient,
        "encounter": principal.encounter,
        "roles": list(principal.roles) or None,
        "purpose_of_use": list(principal.purpose_of_use) or None,
        "attributes": dict(principal.attributes) or None,
    }
    claims.update({k: v for k, v in optional.items() if v is not None})
    return claims


def owner_principal(claims: dict[str, Any]) -> Principal:
    """The Principal of kept claims, without a policy (owner_with_policy adds it)."""
    if claims.get("system"):
        return SYSTEM
    principal = principal_of({**claims, "exp": 0})  # the owner does not expire with its token
    attributes = claims.get("attributes")
    if isinstance(attributes, dict) and attributes:
        principal = replace(principal, attributes={str(k): str(v) for k, v in attributes.items()})
    return replace(principal, expires_at=None)


async def owner_with_policy(subscription_id: str, principal: Principal, policies: Policies | None) -> Principal:
    """principal with its subject's current access policy (cached by Policies until any
    policy changes; keyed by the subscription, as a request's is keyed by its token)."""
    if policies is None or principal.grants is None:
        return principal
    return await policies.apply(f"subscription-owner:{subscription_id}", principal)
