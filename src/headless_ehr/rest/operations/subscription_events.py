"""`Subscription/[id]/$events` (Subscriptions Backport IG 1.1, OperationDefinition
backport-subscription-events): replay a subscription's notifications by event number,
as a notification Bundle of type query-event.

eventsSinceNumber and eventsUntilNumber bound the numbers (both inclusive; by default the
latest MAX_EVENTS); at most MAX_EVENTS are returned, from the lowest: ask again from the
last number given + 1 for the rest. content (empty | id-only | full-resource; by default
the subscription's own payload) chooses what each event carries. Every event is read
through the caller's rights (events/access.py): one the caller may not see is left out,
and a full resource is the event's version as the caller may see it. Notifications are
kept EHR_EVENT_RETENTION_DAYS: older numbers are gone.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ...events.access import followed_subscription, visible_content
from ...events.notification import PAYLOADS, notification_bundle
from ...fhir.outcome import FhirError
from ..context import principal_of, store_of
from ..responses import base_url, json_response
from .arguments import operation_arguments, single

MAX_EVENTS = 100
_KNOWN = frozenset({"eventsSinceNumber", "eventsUntilNumber", "content"})
_NOTIFICATIONS = """
SELECT event_number, event_id, resource_type, resource_id, version_id, interaction, occurred_at
FROM subscription_notification
WHERE subscription_id = $1 AND event_number BETWEEN $2 AND $3
ORDER BY event_number LIMIT $4
"""


def _number(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise FhirError.of(400, "invalid", f"{name} must be a non-negative whole number, not '{value[:40]}'")
    return int(value)


async def events(request: Request, rid: str) -> Response:
    pairs = await operation_arguments(request, _KNOWN)
    since = _number("eventsSinceNumber", single(pairs, "eventsSinceNumber"))
    until = _number("eventsUntilNumber", single(pairs, "eventsUntilNumber"))
    content = single(pairs, "content")
    if content is not None and content not in PAYLOADS:
        raise FhirError.of(400, "invalid", f"content must be one of {', '.join(PAYLOADS)}")
    store, principal, db = store_of(request), principal_of(request), request.app.state.pool
    state = dict(await followed_subscription(store, db, principal, rid))
    if since is not None and until is not None and since > until:
        raise FhirError.of(400, "invalid", "eventsSinceNumber is after eventsUntilNumber")
    until = state["events_since_start"] if until is None else until
    since = max(1, until - MAX_EVENTS + 1) if since is None else since  # none yet: an empty range
    rows = await db.fetch(_NOTIFICATIONS, rid, since, until, MAX_EVENTS)
    if content is not None:
        state["payload"] = content
    full = state["payload"] == "full-resource"
    shown, resources = [], {}
    for row in rows:
        seen = await visible_content(store, principal, row, full)
        if seen is None:
            continue
        shown.append(row)
        if seen:
            resources[row["event_number"]] = seen
    return json_response(request, notification_bundle(state, "query-event", shown, resources, base_url(request)))
