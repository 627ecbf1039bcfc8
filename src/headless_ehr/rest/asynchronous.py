"""Asynchronous requests (FHIR R4 async pattern, http://hl7.org/fhir/R4/async.html):
`Prefer: respond-async` on a transaction or batch, a search, or $everything.

The kick-off records the request as received (method, path, query, headers without
credentials, body) with the caller's Principal (bulk/caller.py: the rights it had when
it asked) and answers 202 with a status URL. Whichever node claims it (bulk/async_worker.py)
replays it through the FHIR endpoint as that caller. A transaction or batch runs in one
database transaction that also stores the answer and completes the request: it is
applied exactly once, and a node that dies mid-way leaves nothing, so the next claim runs
it from the start. The status URL answers 202 (X-Progress, Retry-After; 429 when polled
too soon), then the synchronous answer: its status, headers and body, streamed chunk by
chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..auth.ratelimit import client_address
from ..bulk import async_jobs
from ..bulk.async_jobs import AsyncRequest
from ..bulk.caller import caller_json, caller_of, owner_of
from ..fhir.json import dumps
from ..fhir.outcome import FhirError, operation_outcome
from .context import REPLAY_COMPLETION, REPLAY_CONNECTION, REPLAY_PRINCIPAL, ReplayAbandoned, principal_of
from .jobs import accepted, owned, too_many_open
from .negotiation import prefer, read_body
from .origin import request_origin
from .responses import base_url, info_outcome, json_response

log = logging.getLogger("headless_ehr.rest.async")

STATUS_OPERATION = "$async-status"
RETRY_AFTER = 1  # seconds a client is asked to wait between status requests
_POLL_SLACK = 0.8  # a poll this fraction of Retry-After after the last is still in time
_COMPARTMENTS = frozenset({"Patient", "Encounter", "RelatedPerson", "Practitioner", "Device"})
# headers never kept with a request: credentials (it runs as the recorded Principal),
# framing (the body is stored whole), and the preference that made it asynchronous
_DROPPED = frozenset({"authorization", "cookie", "content-length", "transfer-encoding", "connection", "prefer"})
# headers of the answer that are not kept for the status request's own answer
_NOT_REPLAYED = frozenset({"content-length", "date", "server", "transfer-encoding", "connection"})

Endpoint = Callable[[Request], Awaitable[Response]]


def kind_of(method: str, segments: list[str]) -> str | None:
    """Which asynchronous kind a request is (bundle, search, everything), or None for one
    that is always answered synchronously."""
    n = len(segments)
    if n == 0:
        return "bundle" if method == "POST" else "search" if method == "GET" else None
    if segments[0] == "AuditEvent" or segments[0].startswith(("$", "_")):  # audit trail, operations, history
        return None
    if segments[-1] == "$everything" and segments[0] in ("Patient", "Encounter") and n <= 3 and method == "GET":
        return "everything"
    if n == 1:
        return "search" if method == "GET" else None
    if n == 2 and segments[1] == "_search":
        return "search" if method == "POST" else None
    if n == 3 and segments[0] in _COMPARTMENTS and not segments[2].startswith(("$", "_")) and method == "GET":
        return "search"
    return None


def wanted(request: Request) -> bool:
    """The client asked for an asynchronous answer (and this is not a replay of one)."""
    return "respond-async" in prefer(request) and REPLAY_PRINCIPAL not in request.scope


def _kept_prefer(value: str) -> str:
    parts = [p.strip() for p in value.replace(";", ",").split(",")]
    return ", ".join(p for p in parts if p and p.split("=", 1)[0].strip().lower() != "respond-async")


def _recorded_headers(request: Request) -> list[tuple[str, str]]:
    kept = [(k, v) for k, v in request.headers.items() if k not in _DROPPED]
    rest = _kept_prefer(request.headers.get("prefer") or "")
    if rest:
        kept.append(("prefer", rest))
    return kept


async def kick_off(request: Request) -> Response:
    """Record the request and answer 202 with its status URL (Content-Location)."""
    settings = request.app.state.settings
    body = await read_body(request, settings.max_body_bytes) if request.method == "POST" else b""
    principal = principal_of(request)
    origin = request_origin(request)
    address = client_address(request.scope, settings.trusted_proxies)  # the audit's source, as now
    http = (request.method, request.path_params.get("path", ""), request.url.query, _recorded_headers(request), body)
    request_id = await async_jobs.create(
        request.app.state.pool,
        owner_of(principal),
        caller_json(principal),
        http,
        origin,
        address,
        settings.async_max_open,
    )
    if request_id is None:
        raise too_many_open("asynchronous requests", settings.async_max_open, 10)
    request.app.state.async_requests.wake()
    return accepted(request, "request", request_id, f"{base_url(request)}/{STATUS_OPERATION}?_id={request_id}")


async def _own_request(request: Request) -> AsyncRequest:
    """The request named by _id, if the caller made it (404 otherwise: nothing is told)."""
    request_id = request.query_params.get("_id") or ""
    found = await async_jobs.get(request.app.state.pool, request_id)
    return owned(request, found, "asynchronous request", request_id)


async def status(request: Request) -> Response:
    """202 with X-Progress while the request waits or runs, then its answer."""
    found = await _own_request(request)
    pool = request.app.state.pool
    if found.status == "completed":
        assert found.response_status is not None and found.result_bytes is not None
        headers = {**found.response_headers, "Content-Length": str(found.result_bytes)}
        chunks = async_jobs.chunks(pool, found.id, async_jobs.chunk_count(found.result_bytes))
        return StreamingResponse(chunks, status_code=found.response_status, headers=headers)
    if found.status == "failed":
        raise FhirError.of(
            500,
            "exception",
            f"the request stopped its node {found.attempts} times and was given up; nothing of it was applied",
        )
    wait = {"Retry-After": str(RETRY_AFTER)}
    if not await async_jobs.polled(pool, found.id, RETRY_AFTER * _POLL_SLACK):
        raise FhirError(429, FhirError.of(429, "throttled", "polled too often: wait Retry-After").issues, wait)
    progress = "queued" if found.status == "accepted" else f"running (attempt {found.attempts})"
    return Response(status_code=202, headers={**wait, "X-Progress": progress})


async def cancel(request: Request) -> Response:
    """DELETE on the status URL: cancel an open request (nothing of it is applied) or
    remove a finished one's answer."""
    found = await _own_request(request)
    await async_jobs.cancel(request.app.state.pool, found.id)
    done = "removed" if found.status in ("completed", "failed") else "cancelled"
    return json_response(request, info_outcome(f"request {found.id} {done}"), 202)


# ---- running a request (on the node that claimed it) -----------------------------------


def _replayed(app: Any, recorded: AsyncRequest, conn: asyncpg.Connection, completion: _Completion) -> Request:
    """A request like the one recorded, as the recorded caller, its writes on conn."""
    base = app.state.settings.base_path.rstrip("/")
    path = f"{base}/{recorded.path}"
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": recorded.method,
        "scheme": recorded.origin.split("://", 1)[0],
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": recorded.query.encode(),
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in recorded.headers],
        "client": (recorded.client_address, 0) if recorded.client_address else None,
        "server": None,
        "app": app,
        "path_params": {"path": recorded.path},
        # the origin it came in on (its base URLs) and its source address, worked out at kick-off
        "state": {"origin": recorded.origin, "source_address": recorded.client_address},
        REPLAY_PRINCIPAL: caller_of(recorded.caller),
        REPLAY_CONNECTION: conn,
        REPLAY_COMPLETION: completion,
    }
    scope["headers"].append((b"content-length", str(len(recorded.body)).encode()))
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": recorded.body, "more_body": False}

    return Request(scope, receive)


class _NotOurs(ReplayAbandoned):
    """The request was cancelled, or another node claimed it: roll its work back."""


class _TooLarge(ReplayAbandoned):
    """The answer is over EHR_ASYNC_MAX_RESULT_BYTES: roll the work back, answer this instead."""

    def __init__(self, limit: int) -> None:
        message = f"the answer is larger than EHR_ASYNC_MAX_RESULT_BYTES ({limit}); nothing of the request was applied"
        self.status = 400  # the client's request is over a limit of ours: not a server fault
        self.body = dumps(operation_outcome(FhirError.of(self.status, "too-costly", message).issues))


_FAILED = {"content-type": "application/fhir+json"}


class _Completion:
    """Completes a request with its answer in the transaction of its writes: the worker's,
    or a worker thread's for a large body (rest/offload.py)."""

    def __init__(self, recorded: AsyncRequest, limit: int, hours: int) -> None:
        self.recorded, self.limit, self.hours = recorded, limit, hours
        self.done = False
        self.failure: ReplayAbandoned | None = None

    async def __call__(self, conn: asyncpg.Connection, response: Response) -> None:
        try:
            body = bytes(response.body)
            if len(body) > self.limit:
                raise _TooLarge(self.limit)
            headers = {k: v for k, v in response.headers.items() if k not in _NOT_REPLAYED}
            if not await async_jobs.complete(conn, self.recorded, response.status_code, headers, body, self.hours):
                raise _NotOurs
        except ReplayAbandoned as exc:
            self.failure = exc
            raise
        self.done = True


def _writes(recorded: AsyncRequest) -> bool:
    """A transaction or batch: its writes and its completion share one transaction."""
    return kind_of(recorded.method, [s for s in recorded.path.split("/") if s]) == "bundle"


async def execute(app: Any, endpoint: Endpoint, recorded: AsyncRequest) -> None:
    """Run a claimed request and complete it: a transaction or batch in one database
    transaction with its completion (main pool: its writes are ordinary resource writes
    with their outbox rows); a read first, then its completion (no transaction held open
    while a long search runs)."""
    settings = app.state.settings
    hours = settings.bulk_retention_hours
    completion = _Completion(recorded, settings.async_max_result_bytes, hours)
    async with app.state.pool.acquire() as conn:
        try:
            if _writes(recorded):
                async with conn.transaction():
                    response = await endpoint(_replayed(app, recorded, conn, completion))
                    if completion.failure is not None:  # refused in a worker thread, rolled back there
                        raise completion.failure
                    if not completion.done:
                        await completion(conn, response)
            else:
                response = await endpoint(_replayed(app, recorded, conn, completion))
                async with conn.transaction():
                    await completion(conn, response)
            return
        except _NotOurs:
            log.info("asynchronous request %s was cancelled or taken over; its work is rolled back", recorded.id)
            return
        except _TooLarge as large:  # its writes are rolled back; the refusal is its answer
            status, failure = large.status, large.body
        except asyncpg.PostgresError:  # its transaction failed outside any savepoint: rolled back
            log.exception("asynchronous request %s failed", recorded.id)
            status = 500
            failure = dumps(operation_outcome(FhirError.of(500, "exception", "internal server error").issues))
        async with conn.transaction():
            await async_jobs.complete(conn, recorded, status, _FAILED, failure, hours)
