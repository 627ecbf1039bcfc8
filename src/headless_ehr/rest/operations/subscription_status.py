"""`Subscription/[id]/$status` and `Subscription/$status` (Subscriptions Backport IG 1.1,
OperationDefinition backport-subscription-status): a searchset Bundle of one
SubscriptionStatus (R4: a Parameters, type query-status) per subscription the caller
may follow (events/access.py), with `error` for one in error.

At type level `id` names the subscriptions (unknown ones, or ones the caller may not
follow, are left out); without it, the Subscriptions the caller can search, at most
MAX_STATUSES, narrowed by `status` (in the search: the resource's status is the state's).
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ...events.access import STATE_COLUMNS, followed_subscription, may_follow
from ...events.notification import status_parameters
from ...fhir.outcome import FhirError
from ..context import principal_of, store_of
from ..responses import base_url, json_response
from .arguments import listed, operation_arguments

MAX_STATUSES = 100
_KNOWN = frozenset({"id", "status"})
_STATES = f"SELECT {STATE_COLUMNS} FROM subscription_state WHERE id = ANY($1::text[])"


async def status(request: Request, rid: str | None) -> Response:
    pairs = await operation_arguments(request, _KNOWN if rid is None else frozenset())
    store, principal, db = store_of(request), principal_of(request), request.app.state.pool
    if rid is not None:
        rows = [await followed_subscription(store, db, principal, rid)]
    else:
        ids = listed(pairs, "id")
        if len(ids) > MAX_STATUSES:
            raise FhirError.of(400, "too-costly", f"$status takes at most {MAX_STATUSES} ids")
        wanted = set(listed(pairs, "status"))
        params = [("_count", str(MAX_STATUSES)), ("_elements", "id")]
        if ids:
            params.append(("_id", ",".join(ids)))
        elif wanted:  # searched, not only filtered: the first page of all would miss those after it
            params.append(("status", ",".join(sorted(wanted))))
        page = await store.search(principal, "Subscription", params, strict=True)  # what the caller may read
        readable = [s.id for s in page.entries]
        rows = [r for r in await db.fetch(_STATES, readable) if may_follow(principal, r)]
        rows = sorted((r for r in rows if not wanted or r["status"] in wanted), key=lambda r: readable.index(r["id"]))
    base = base_url(request)
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": status_parameters(row, "query-status", [], base, error=_error(row)),
            "search": {"mode": "match"},
        }
        for row in rows
    ]
    bundle = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "searchset", "total": len(entries)}
    bundle["entry"] = entries
    return json_response(request, bundle)


def _error(row: Any) -> str | None:
    return row["error"] if row["status"] == "error" else None
