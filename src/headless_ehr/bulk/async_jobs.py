"""Asynchronous requests in the database (migration 0029): the request as received, who
asked, and, once run, its answer.

A request is claimed like an export job (bulk/export_jobs.py): FOR UPDATE SKIP LOCKED on
an open request whose lease has run out, a fresh lease token, renewals fenced on it. Its
completion (complete()) runs in the caller's transaction, the one that holds the
request's own writes, and is fenced too: a node that lost its lease, or a request
cancelled meanwhile, completes nothing, so its writes roll back with it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from . import jobs

TABLE = "async_request"
LEASE_SECONDS = 15  # a dead node's request is taken over this long after its last renewal
MAX_ATTEMPTS = 3  # claims of one request: one that keeps killing its node fails for good
CHUNK_BYTES = 1024 * 1024  # a result is stored, and streamed back, in chunks of this size


@dataclass
class AsyncRequest:
    """An async_request row (body only when claimed); lease_token is this node's claim."""

    id: str
    owner: str
    caller: dict[str, Any]
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    origin: str
    client_address: str | None
    status: str
    attempts: int
    response_status: int | None
    response_headers: dict[str, str]
    result_bytes: int | None
    lease_token: str | None
    expires_at: datetime | None
    body: bytes = b""


_COLUMNS = (
    "id, owner, caller::text, method, path, query, headers::text, origin, client_address, status, attempts,"
    " response_status, response_headers::text, result_bytes, lease_token, expires_at"
)


def _request(row: asyncpg.Record, body: bytes = b"") -> AsyncRequest:
    return AsyncRequest(
        str(row["id"]),
        row["owner"],
        orjson.loads(row["caller"]),
        row["method"],
        row["path"],
        row["query"],
        [(k, v) for k, v in orjson.loads(row["headers"])],
        row["origin"],
        row["client_address"],
        row["status"],
        row["attempts"],
        row["response_status"],
        orjson.loads(row["response_headers"]) if row["response_headers"] else {},
        row["result_bytes"],
        None if row["lease_token"] is None else str(row["lease_token"]),
        row["expires_at"],
        body,
    )


async def create(
    db: asyncpg.Pool,
    owner: str,
    caller: dict[str, Any],
    http: tuple[str, str, str, list[tuple[str, str]], bytes],
    origin: str,
    client_address: str | None,
    max_open: int,
) -> str | None:
    """Record a request (method, path, query, headers, body) and the origin it came in on; its id. None when the owner
    has max_open accepted or running already (checked under a lock of the owner's, so
    parallel requests cannot pass it together)."""
    method, path, query, headers, body = http
    async with db.acquire() as conn, conn.transaction():
        if not await jobs.under_open_limit(conn, TABLE, "async-request", owner, max_open):
            return None
        key = uuid.uuid4()
        await conn.execute(
            "INSERT INTO async_request (id, owner, caller, method, path, query, headers, body, origin, client_address,"
            " status) VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7::jsonb, $8, $9, $10, 'accepted')",
            key,
            owner,
            orjson.dumps(caller).decode(),
            method,
            path,
            query,
            orjson.dumps(headers).decode(),
            body,
            origin,
            client_address,
        )
    return str(key)


async def get(db: asyncpg.Pool, request_id: str) -> AsyncRequest | None:
    row = await jobs.row_of(db, TABLE, _COLUMNS, request_id)
    return None if row is None else _request(row)


async def polled(db: asyncpg.Pool, request_id: str, min_seconds: float) -> bool:
    """Record a status request; False when the last one answered was under min_seconds ago."""
    return await jobs.polled(db, TABLE, request_id, min_seconds)


async def cancel(db: asyncpg.Pool, request_id: str) -> None:
    """DELETE on the status URL: an open request is cancelled (a running one's writes are
    rolled back: its completion is fenced on status); a finished one is removed."""
    key = uuid.UUID(request_id)
    async with db.acquire() as conn, conn.transaction():
        done = await conn.fetchval(
            "UPDATE async_request SET status = 'cancelled', lease_token = NULL, lease_until = NULL,"
            " body = '', finished_at = now(), expires_at = now() + interval '1 hour'"
            " WHERE id = $1 AND status IN ('accepted', 'running') RETURNING 1",
            key,
        )
        if done is None:
            await conn.execute("DELETE FROM async_request WHERE id = $1", key)


async def claim(db: asyncpg.Pool) -> AsyncRequest | None:
    """An open request no live node holds, now leased to the caller (a new lease token),
    with its body. Requests already claimed MAX_ATTEMPTS times fail first."""
    await db.execute(
        "UPDATE async_request SET status = 'failed', response_status = 500, lease_token = NULL,"
        " finished_at = now(), expires_at = now() + interval '1 hour'"
        " WHERE status = 'running' AND attempts >= $1 AND lease_until < clock_timestamp()",
        MAX_ATTEMPTS,
    )
    row = await db.fetchrow(
        f"UPDATE async_request SET status = 'running', attempts = attempts + 1, lease_token = $1,"
        f" {jobs.leased(2)}"
        f" WHERE id = (SELECT id FROM async_request WHERE status IN ('accepted', 'running')"
        f" AND attempts < $3 AND {jobs.lease_free()}"
        f" ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}, body",
        uuid.uuid4(),
        LEASE_SECONDS,
        MAX_ATTEMPTS,
    )
    return None if row is None else _request(row, row["body"])


async def renew(db: asyncpg.Pool, request: AsyncRequest) -> bool:
    """Renew the lease while the request runs; False when it is no longer this claim's."""
    assert request.lease_token is not None
    return await jobs.renew(db, TABLE, request.id, request.lease_token, LEASE_SECONDS)


async def complete(
    conn: asyncpg.Connection,
    request: AsyncRequest,
    status: int,
    headers: dict[str, str],
    body: bytes,
    retention_hours: int,
) -> bool:
    """Record the answer, in conn's transaction (the one that holds the request's writes);
    False when the request is no longer this claim's: the caller rolls back."""
    assert request.lease_token is not None
    key = uuid.UUID(request.id)
    ok = await conn.fetchval(
        "UPDATE async_request SET status = 'completed', response_status = $3, response_headers = $4::jsonb,"
        " result_bytes = $5, body = '', lease_token = NULL, lease_until = NULL, finished_at = now(),"
        " expires_at = now() + make_interval(hours => $6)"
        " WHERE id = $1 AND lease_token = $2 AND status = 'running' RETURNING 1",
        key,
        uuid.UUID(request.lease_token),
        status,
        orjson.dumps(headers).decode(),
        len(body),
        retention_hours,
    )
    if ok is None:
        return False
    view = memoryview(body)
    await conn.executemany(
        "INSERT INTO async_result_chunk (request_id, seq, data) VALUES ($1, $2, $3)",
        [(key, i, view[at : at + CHUNK_BYTES]) for i, at in enumerate(range(0, len(body), CHUNK_BYTES))],
    )
    return True


async def chunks(db: asyncpg.Pool, request_id: str, count: int) -> AsyncIterator[bytes]:
    """The answer's body, chunk by chunk (one query each: one chunk in memory at a time)."""
    key = uuid.UUID(request_id)
    for seq in range(count):
        data = await db.fetchval("SELECT data FROM async_result_chunk WHERE request_id = $1 AND seq = $2", key, seq)
        if data is None:  # removed meanwhile (DELETE, expiry): the answer ends short
            return
        yield data


def chunk_count(result_bytes: int) -> int:
    return -(-result_bytes // CHUNK_BYTES)


async def release(db: asyncpg.Pool, request: AsyncRequest) -> None:
    """Let another node (or this one after a restart) take the request over at once."""
    if request.lease_token is not None:
        await db.execute(
            "UPDATE async_request SET lease_until = NULL, attempts = greatest(attempts - 1, 0)"
            " WHERE id = $1 AND lease_token = $2 AND status = 'running'",
            uuid.UUID(request.id),
            uuid.UUID(request.lease_token),
        )


async def expired(db: asyncpg.Pool, limit: int = 100) -> list[str]:
    """Remove up to limit requests past their expiry (their results with them)."""
    return await jobs.expired(db, TABLE, limit)
