"""The asynchronous request flow from a client's side: kick-off, poll, answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx

ASYNC = {"Prefer": "respond-async"}


async def kick_off(client: httpx.AsyncClient, method: str, url: str, **kwargs: object) -> str:
    """Send a request with Prefer: respond-async; the status URL it is answered with."""
    headers = {**ASYNC, **(kwargs.pop("headers", None) or {})}  # type: ignore[dict-item]
    res = await client.request(method, url, headers=headers, **kwargs)  # type: ignore[arg-type]
    assert res.status_code == 202, res.text
    return res.headers["Content-Location"]


async def answer(client: httpx.AsyncClient, status_url: str, seconds: float = 30) -> httpx.Response:
    """Poll the status URL as asked (Retry-After) until the request's answer comes."""
    deadline = time.monotonic() + seconds
    await asyncio.sleep(0.05)
    while time.monotonic() < deadline:
        res = await client.get(status_url)
        if res.status_code != 202:
            return res
        await asyncio.sleep(float(res.headers["Retry-After"]))
    raise AssertionError("the asynchronous request did not finish")


async def run(client: httpx.AsyncClient, method: str, url: str, **kwargs: object) -> httpx.Response:
    return await answer(client, await kick_off(client, method, url, **kwargs))


@contextlib.asynccontextmanager
async def row_locked(db: asyncpg.Pool, resource_type: str, rid: str) -> AsyncIterator[None]:
    """Hold a resource's row locked: a request that writes it waits (runs) meanwhile."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM resource WHERE resource_type = $1 AND id = $2 FOR UPDATE", resource_type, rid)
        yield


async def until_running(db: asyncpg.Pool, status_url: str, seconds: float = 10) -> None:
    request_id = status_url.rsplit("=", 1)[1]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = await db.fetchval("SELECT status FROM async_request WHERE id = $1::uuid", request_id)
        if status == "running":
            await asyncio.sleep(0.2)  # inside its transaction by now, waiting for the lock
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the request was never claimed")
