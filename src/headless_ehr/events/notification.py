"""Notification Bundles of the Subscriptions Backport IG 1.1 (R4), for every channel.

A notification is a Bundle of type `history` (backport-subscription-notification-r4):
entry 0 is the SubscriptionStatus as a `Parameters` (backport-subscription-status-r4)
with the subscription, its topic and status, the notification type, the count of
events since the subscription started and one `notification-event` per event carried
(event-number, timestamp, focus); then one entry per event as the subscription's
payload content asks:

- empty: nothing but entry 0, and its notification-events name no focus;
- id-only: the focus in entry 0, and an entry with fullUrl and request (no resource);
- full-resource: the focus, and an entry with fullUrl, the resource, request and response.

Used by the rest-hook delivery (events/delivery.py), the WebSocket channel and the
`$status` / `$events` operations, so every channel says the same thing.

The plain API (state and notifications are mappings: asyncpg Records or dicts):

- `status_parameters(state, kind, notifications, base_url, error=None)`: the
  SubscriptionStatus Parameters resource (a dict), e.g. for `$status` (kind
  "query-status").
- `notification_bundle(state, kind, notifications, resources, base_url, ...)`: the
  whole Bundle (a dict whose resources are `orjson.Fragment`s of the stored bytes:
  serialise it with `orjson.dumps` or `fhir.json.dumps`, decimals stay verbatim).
- `notification_body(...)`: the same, serialised (bytes).

`state` holds subscription_state's columns `id`, `status`, `topic`, `payload`
(empty | id-only | full-resource) and `events_since_start`. Each notification holds
subscription_notification's `event_number`, `resource_type`, `resource_id`,
`version_id`, `interaction` (create | update | patch | delete) and `occurred_at`.
`resources` maps an event_number to the JSON bytes to send for it (read through the
subscriber's rights at delivery time); an event whose number is missing there gets no
resource entry even with full-resource content (a deletion never has one).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from ..fhir import json as fhir_json

Row = Mapping[str, Any]

IG = "http://hl7.org/fhir/uv/subscriptions-backport"
STATUS_PROFILE = f"{IG}/StructureDefinition/backport-subscription-status-r4"
NOTIFICATION_PROFILE = f"{IG}/StructureDefinition/backport-subscription-notification-r4"

KINDS = ("handshake", "heartbeat", "event-notification", "query-status", "query-event")
PAYLOADS = ("empty", "id-only", "full-resource")

# how each interaction is told in a history entry: (request method, response status)
_REQUEST = {
    "create": ("POST", "201 Created"),
    "update": ("PUT", "200 OK"),
    "patch": ("PATCH", "200 OK"),
    "delete": ("DELETE", "204 No Content"),
}


def instant(ts: datetime) -> str:
    """An R4 instant, in UTC with microseconds (as meta.lastUpdated is written)."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def subscription_url(base_url: str, subscription_id: str) -> str:
    return f"{base_url.rstrip('/')}/Subscription/{subscription_id}"


def focus_url(base_url: str, notification: Row) -> str:
    return f"{base_url.rstrip('/')}/{notification['resource_type']}/{notification['resource_id']}"


def status_parameters(
    state: Row,
    kind: str,
    notifications: Sequence[Row],
    base_url: str,
    *,
    error: str | None = None,
) -> dict[str, Any]:
    """The SubscriptionStatus (backport-subscription-status-r4) of a notification of
    `kind` carrying `notifications` (none for a handshake, heartbeat or query-status);
    `error` adds an `error` parameter (a subscription in error, for query-status)."""
    assert kind in KINDS, kind
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": subscription_url(base_url, state["id"])}}
    ]
    if state.get("topic"):
        parameters.append({"name": "topic", "valueCanonical": state["topic"]})
    parameters.append({"name": "status", "valueCode": state["status"]})
    parameters.append({"name": "type", "valueCode": kind})
    # an event-notification counts the events up to its own (more may be numbered while it waits
    # to be sent: every channel says the same); a string in R4 (no integer64): it may pass 2^31
    count = notifications[-1]["event_number"] if kind == "event-notification" and notifications else None
    count = state["events_since_start"] if count is None else count
    parameters.append({"name": "events-since-subscription-start", "valueString": str(count)})
    with_focus = state["payload"] != "empty"
    for n in notifications:
        part: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(n["event_number"])},
            {"name": "timestamp", "valueInstant": instant(n["occurred_at"])},
        ]
        if with_focus:
            part.append({"name": "focus", "valueReference": {"reference": focus_url(base_url, n)}})
        parameters.append({"name": "notification-event", "part": part})
    if error:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": error}})
    return {"resourceType": "Parameters", "meta": {"profile": [STATUS_PROFILE]}, "parameter": parameters}


def _event_entry(n: Row, payload: str, resources: Mapping[int, bytes], base_url: str) -> dict[str, Any]:
    method, status = _REQUEST[n["interaction"]]
    url = f"{n['resource_type']}/{n['resource_id']}"
    entry: dict[str, Any] = {"fullUrl": focus_url(base_url, n)}
    content = resources.get(n["event_number"]) if payload == "full-resource" else None
    if content is not None and n["interaction"] != "delete":
        entry["resource"] = orjson.Fragment(content)
    entry["request"] = {"method": method, "url": n["resource_type"] if method == "POST" else url}
    response: dict[str, Any] = {"status": status}
    if payload == "full-resource":
        response["etag"] = f'W/"{n["version_id"]}"'
        response["lastModified"] = instant(n["occurred_at"])
    entry["response"] = response
    return entry


def notification_bundle(
    state: Row,
    kind: str,
    notifications: Sequence[Row],
    resources: Mapping[int, bytes],
    base_url: str,
    *,
    bundle_id: str | None = None,
    timestamp: datetime | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The notification Bundle (type history) of `kind` for `notifications`, in the order
    given (event_number order). bundle_id: a stable id (e.g. the webhook-id, so a resent
    notification is the same Bundle); a new uuid when None."""
    bundle_id = bundle_id or str(uuid.uuid4())
    status = status_parameters(state, kind, notifications, base_url, error=error)
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'status:' + bundle_id)}",
            "resource": status,
            # entry 0 answers as the $status operation would (bdl-3, bdl-4: history entries need a request)
            "request": {"method": "GET", "url": f"{subscription_url(base_url, state['id'])}/$status"},
            "response": {"status": "200 OK"},
        }
    ]
    payload = state["payload"]
    if payload != "empty":
        entries.extend(_event_entry(n, payload, resources, base_url) for n in notifications)
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": instant(timestamp or datetime.now(UTC)),
        "entry": entries,
    }


def notification_body(
    state: Row,
    kind: str,
    notifications: Sequence[Row],
    resources: Mapping[int, bytes],
    base_url: str,
    **options: Any,
) -> bytes:
    """notification_bundle() as JSON bytes."""
    return fhir_json.dumps(notification_bundle(state, kind, notifications, resources, base_url, **options))
