"""Who may follow a Subscription: bind a WebSocket to it, ask its `$status`, replay its
`$events`, get a binding token for it (docs/events.md, WebSocket and Operations).

The caller must be able to read the Subscription resource (store.read: 404 when it
cannot, 403 without read rights on Subscription). A caller held to one patient's record
(a patient-context token, a patient user) may follow only the subscriptions of that same
patient's owner: a Subscription is not in the Patient compartment, so reading it is not
enough to keep one patient off another's subscriptions. Every event a follower receives
is still read through the follower's own rights (events/websocket.py, the operations).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

from ..auth.policies import masked
from ..auth.principal import Principal
from ..db.pool import jsonb_value
from ..fhir.outcome import FhirError
from ..store import ResourceStore

# what the channels and operations need of a subscription's state (migration 0021)
STATE_COLUMNS = "id, owner, status, topic, channel, payload, r4_style, heartbeat_seconds, events_since_start, error"
_STATE = f"SELECT {STATE_COLUMNS} FROM subscription_state WHERE id = $1"

Executor = asyncpg.Pool | asyncpg.Connection


def patients_of(principal: Principal) -> frozenset[str]:
    """The patients whose records bound this principal's grants (none: not patient-bound)."""
    if principal.grants is None:
        return frozenset()
    found = (principal.compartment_patient(g) for g in principal.grants)
    return frozenset(p for p in found if p is not None)


def owner_patients(owner: Mapping[str, Any]) -> frozenset[str]:
    """The patients a subscription's owner (subscription_state.owner: its token's claims)
    is bound to: its `patient` context and a Patient `fhirUser`."""
    found = set()
    if isinstance(owner.get("patient"), str):
        found.add(owner["patient"])
    user = owner.get("fhirUser")
    if isinstance(user, str) and "Patient/" in user:
        found.add(user.rstrip("/").rsplit("/", 1)[-1])
    return frozenset(found)


def _owner(row: Mapping[str, Any]) -> Mapping[str, Any]:
    owner = jsonb_value(row["owner"])
    return owner if isinstance(owner, Mapping) else {}


def may_follow(principal: Principal, state: Mapping[str, Any]) -> bool:
    """The owner rule, beyond reading the Subscription: a caller held to patients' records
    follows only subscriptions whose owner was held to (some of) the same patients'."""
    mine = patients_of(principal)
    if not mine:
        return True
    theirs = owner_patients(_owner(state))
    return bool(theirs) and theirs <= mine


async def followed_subscription(
    store: ResourceStore, db: Executor, principal: Principal, subscription_id: str
) -> asyncpg.Record:
    """The state of a subscription the principal may follow; 404 (as a read would) when it
    may not, or when the server keeps no state for it (not accepted yet)."""
    await store.read(principal, "Subscription", subscription_id)  # 403, 404, 410 as for a read
    row = await db.fetchrow(_STATE, subscription_id)
    if row is None:
        raise FhirError.of(404, "not-found", f"Subscription/{subscription_id} has no notification state (yet)")
    if not may_follow(principal, row):
        raise FhirError.of(404, "not-found", f"Subscription/{subscription_id} is not known")
    return row


async def visible_content(
    store: ResourceStore, principal: Principal, notification: Mapping[str, Any], full: bool
) -> bytes | None:
    """What a follower may see of a notification's resource, read through its rights now:
    None when it may not see the event at all (no read right, outside its compartment, a
    Consent denies it); b"" when it may, without content (not full, or a deletion); else
    the event's version as the follower may see it (hidden elements removed)."""
    rtype, rid = notification["resource_type"], notification["resource_id"]
    try:
        if full and notification["interaction"] != "delete":
            # vread checks the resource as it is now (compartment, consent), then gives the event's version
            stored = await store.vread(principal, rtype, rid, str(notification["version_id"]))
            assert stored.content is not None
            return masked(principal, rtype, stored.content)
        await store.read(principal, rtype, rid)
    except FhirError as error:
        if error.status != 410:  # 410: deleted since, yet reachable: the event without content
            return None
    return b""
