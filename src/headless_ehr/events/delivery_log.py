"""The delivery log in the admin API: `GET /admin/subscriptions/{id}/deliveries`.

Admins see where a rest-hook subscription stands (status, delivered_through against
events_since_start, failing since, next attempt, error) and its latest attempts, newest
first: event number, kind (event-notification | handshake | heartbeat), attempt, time,
HTTP status (null: no answer), latency and error. `_count` (1..1000, default 100)
bounds the list; `before` (an instant) pages back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..auth.admin_api import admin_endpoint
from ..fhir.outcome import FhirError
from .notification import instant

MAX_COUNT = 1000

_STATE = """
SELECT id, status, channel, endpoint, events_since_start, delivered_through, attempts, failing_since,
       next_attempt_at, last_sent_at, error
FROM subscription_state WHERE id = $1
"""
_DELIVERIES = """
SELECT event_number, kind, attempt, at, http_status, latency_ms, error FROM subscription_delivery
WHERE subscription_id = $1 AND at < coalesce($2::timestamptz, 'infinity') ORDER BY at DESC LIMIT $3
"""


def delivery_log_routes(prefix: str = "/admin") -> list[Route]:
    return [Route(f"{prefix}/subscriptions/{{id}}/deliveries", admin_endpoint(_deliveries), methods=["GET"])]


def _json_value(value: Any) -> Any:
    return instant(value) if isinstance(value, datetime) else value


def _count(request: Request) -> int:
    raw = request.query_params.get("_count", "100")
    if not (raw.isascii() and raw.isdigit() and 0 < int(raw) <= MAX_COUNT):
        raise FhirError.of(400, "invalid", f"_count must be a whole number from 1 to {MAX_COUNT}")
    return int(raw)


def _before(request: Request) -> datetime | None:
    raw = request.query_params.get("before")
    if raw is None:
        return None
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise FhirError.of(400, "invalid", "before must be an instant, e.g. 2026-12-01T10:00:00Z") from None
    if at.tzinfo is None:
        raise FhirError.of(400, "invalid", "before must carry a time zone (e.g. Z)")
    try:
        return at.astimezone(UTC)  # in range as PostgreSQL stores it (an offset can push past year 1 or 9999)
    except OverflowError:
        raise FhirError.of(400, "invalid", "before is out of range") from None


async def _deliveries(request: Request) -> Response:
    sid = request.path_params["id"]
    count, before = _count(request), _before(request)
    pool = request.app.state.pool
    state = await pool.fetchrow(_STATE, sid)
    if state is None:
        raise FhirError.of(404, "not-found", f"no subscription '{sid[:200]}'")
    rows = await pool.fetch(_DELIVERIES, sid, before, count)
    body = {
        "subscription": {k: _json_value(v) for k, v in state.items()},
        "deliveries": [{k: _json_value(v) for k, v in r.items()} for r in rows],
    }
    return Response(orjson.dumps(body), 200, {"Cache-Control": "no-store"}, media_type="application/json")
