"""`/fhir/ws` and `/ws/subscriptions`: the upgrade to the WebSocket channel (events/websocket.py).

The upgrade request is authenticated as every FHIR request is (the same bearer tokens,
the same audience: this server's FHIR base); a bad token is refused before the socket
opens, with 401 and an OperationOutcome where the server can send an HTTP answer
(close code 1008 otherwise). Without an Authorization header the socket opens
unauthenticated: only `bind-with-token` can bind on it (browsers cannot set headers on
a WebSocket).
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket

from ..fhir import json as fhir_json
from ..fhir.outcome import FhirError, operation_outcome
from .responses import base_url

_HTTP_SCHEMES = {"ws": "http", "wss": "https"}


def fhir_base(socket: WebSocket) -> str:
    """The FHIR base a client of this socket addresses (as base_url() for its HTTP requests)."""
    scope = dict(socket.scope)
    scope["scheme"] = _HTTP_SCHEMES.get(scope.get("scheme", "ws"), "http")
    scope["type"] = "http"
    return base_url(HTTPConnection(scope))  # type: ignore[arg-type]


def websocket_url(base: str) -> str:
    """The channel's URL under a FHIR base (`$get-ws-binding-token`, the CapabilityStatement)."""
    scheme, _, rest = base.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws"


async def websocket_endpoint(socket: WebSocket) -> None:
    app = socket.app
    settings = app.state.settings
    channel = getattr(app.state, "websockets", None)
    try:
        if channel is None:
            raise FhirError.of(503, "transient", "the WebSocket channel is not running")
        base = fhir_base(socket)
        principal = None
        if "authorization" in socket.headers or not settings.auth:
            principal = await app.state.authenticate(socket, base)
    except FhirError as error:
        await _refuse(socket, error)
        return
    await channel.serve(socket, principal, base)


async def _refuse(socket: WebSocket, error: FhirError) -> None:
    """An HTTP answer to the upgrade request where the server supports it, else close code 1008."""
    if "websocket.http.response" in socket.scope.get("extensions", {}):
        body = fhir_json.dumps(operation_outcome(error.issues))
        response = Response(body, error.status, error.headers, media_type="application/fhir+json;charset=utf-8")
        await socket.send_denial_response(response)
        return
    await socket.close(1008, str(error)[:120])
