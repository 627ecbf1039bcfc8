"""Building FHIR responses: resources, bundles, OperationOutcomes and their headers."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.utils import format_datetime, formatdate
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..fhir import json as fhir_json
from ..fhir.outcome import FhirError, Issue, operation_outcome
from ..store import StoredResource
from .negotiation import FHIR_JSON
from .origin import request_origin


def media_type(request: Request) -> str:
    return getattr(request.state, "media_type", FHIR_JSON)


def fhir_response(
    request: Request, body: bytes | None, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        body if body is not None else b"",
        status_code=status,
        headers=headers,
        media_type=f"{media_type(request)};charset=utf-8" if body is not None else None,
    )


def json_response(request: Request, value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return fhir_response(request, fhir_json.dumps(value), status, headers)


def outcome_response(request: Request, error: FhirError) -> Response:
    return json_response(request, operation_outcome(error.issues), error.status, error.headers)


def info_outcome(message: str, issues: list[Issue] | None = None) -> dict[str, Any]:
    return operation_outcome([Issue("information", "informational", message), *(issues or [])])


def http_date(ts: datetime) -> str:
    return format_datetime(ts.astimezone(UTC), usegmt=True)


def etag(version: int) -> str:
    return f'W/"{version}"'


def version_headers(stored: StoredResource) -> dict[str, str]:
    headers = {"ETag": etag(stored.version_id), "Last-Modified": http_date(stored.last_updated)}
    # Date is never earlier than Last-Modified (RFC 9110 §8.8.2.1): DateHeader stamps
    # the time of sending, unless the database's clock runs ahead of ours.
    if stored.last_updated.timestamp() > time.time():
        headers["Date"] = headers["Last-Modified"]
    return headers


class DateHeader:
    """ASGI middleware: a `Date` header on every response, taken when it is sent.

    uvicorn's own Date is refreshed once a second, so a response to a fresh write
    could carry a Date a second older than its Last-Modified; `ehr serve` turns that
    header off and this one takes its place. A Date set by the app (version_headers)
    is kept.
    """

    def __init__(self, app: ASGIApp):
        self.app = app
        self._second = 0
        self._date = b""

    def _now(self) -> bytes:
        second = int(time.time())
        if second != self._second:  # format once a second, but always the current second
            self._second, self._date = second, formatdate(second, usegmt=True).encode()
        return self._date

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"date" for name, _ in headers):
                    headers.append((b"date", self._now()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_dated)


def base_url(request: Request) -> str:
    """The server's FHIR base: EHR_PUBLIC_BASE_URL, else where the client (or a trusted proxy) says it sent
    the request (see origin.py)."""
    settings = request.app.state.settings
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    return request_origin(request) + settings.base_path


def location(request: Request, stored: StoredResource) -> str:
    return f"{base_url(request)}/{stored.resource_type}/{stored.id}/_history/{stored.version_id}"
