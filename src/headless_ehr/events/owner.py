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

import asyncpg
import orjson

from ..auth.policies import Policies
from ..auth.principal import SUBSCRIPTION_OWNER_TAG, SYSTEM, Principal
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


async def load_owner(
    db: asyncpg.Pool | asyncpg.Connection, subscription_id: str, policies: Policies | None
) -> Principal | None:
    """The owner of a Subscription as the relay matches with it (with its current policy),
    e.g. to filter a full-resource payload at delivery; None when it has no state."""
    claims = await db.fetchval("SELECT owner FROM subscription_state WHERE id = $1", subscription_id)
    if claims is None:
        return None
    return await owner_with_policy(subscription_id, owner_principal(orjson.loads(claims)), policies)


def tag_patient(principal: Principal) -> str | None:
    """The patient whose owner tag (auth/principal.py SUBSCRIPTION_OWNER_TAG) the
    principal's Subscriptions carry: when every grant that writes Subscriptions is bound
    to one patient's record (a patient's app, a patient user); else None."""
    if principal.grants is None:
        return None
    writing = [g for g in principal.grants if g.resource_type in ("*", "Subscription") and g.permissions & set("cud")]
    patients = {principal.compartment_patient(g) for g in writing}
    if not writing or None in patients:
        return None
    patients.discard("")
    return patients.pop() if len(patients) == 1 else None


def with_owner_tag(resource: dict[str, Any], patient: str | None) -> dict[str, Any]:
    """The resource with the owner tag of patient (and no other, whoever wrote it)."""
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag") or () if not (isinstance(t, dict) and t.get("system") == SUBSCRIPTION_OWNER_TAG)]
    if patient is not None:
        tags.append({"system": SUBSCRIPTION_OWNER_TAG, "code": f"Patient/{patient}"})
    if tags:
        meta["tag"] = tags
    else:
        meta.pop("tag", None)
    out = dict(resource)
    if meta:
        out["meta"] = meta
    else:
        out.pop("meta", None)
    return out
