"""`Subscription/[id]/$get-ws-binding-token` and `Subscription/$get-ws-binding-token?id=…`
(Subscriptions Backport IG 1.1): a short-lived token to bind a WebSocket to
subscriptions with the websocket channel that the caller may follow
(events/binding_tokens.py, events/access.py). It carries the caller's rights.

Answer: Parameters token, expiration, subscription (one per subscription), websocket-url.
At type level at least one `id` is needed (a token for "every subscription" is not given).
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from ...events.access import followed_subscription
from ...events.binding_tokens import MAX_SUBSCRIPTIONS
from ...events.notification import subscription_url
from ...fhir.outcome import FhirError
from ..context import principal_of, store_of
from ..responses import base_url, json_response
from ..websocket import websocket_url
from .arguments import listed, operation_arguments


async def ws_binding_token(request: Request, rid: str | None) -> Response:
    pairs = await operation_arguments(request, frozenset({"id"}))
    ids = [rid] if rid is not None else listed(pairs, "id")  # at instance level `id` is ignored (IG)
    if not ids:
        raise FhirError.of(400, "required", "name the subscriptions: id=<Subscription id> (one or more)")
    if len(ids) > MAX_SUBSCRIPTIONS:
        raise FhirError.of(400, "too-costly", f"a binding token names at most {MAX_SUBSCRIPTIONS} subscriptions")
    store, principal = store_of(request), principal_of(request)
    channel = request.app.state.websockets
    for sid in ids:
        state = await followed_subscription(store, request.app.state.pool, principal, sid)
        if state["channel"] != "websocket":
            raise FhirError.of(422, "invalid", f"Subscription/{sid} does not have the websocket channel")
    base = base_url(request)
    token, expires = channel.binding_tokens.issue(principal, ids, base)
    parameters = [
        {"name": "token", "valueString": token},
        {"name": "expiration", "valueDateTime": datetime.fromtimestamp(expires, UTC).isoformat()},
        *({"name": "subscription", "valueString": subscription_url(base, sid)} for sid in ids),
        {"name": "websocket-url", "valueUrl": websocket_url(base)},
    ]
    return json_response(request, {"resourceType": "Parameters", "parameter": parameters})
