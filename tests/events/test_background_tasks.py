"""The background helpers the event workers share: the LISTEN connection (db/listen.py)
and the periodic job (db/periodic.py) outlive a lost database connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from headless_ehr.db.listen import Listener
from headless_ehr.db.periodic import Periodic

CHANNEL = "ehr_test_listen"


async def _heard_after(db: asyncpg.Pool, queue: asyncio.Queue[str | None], payload: str) -> str | None:
    """NOTIFY payload, then the first payload the listener passes on (skipping reconnection wake-ups)."""
    await db.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
    while True:
        got = await asyncio.wait_for(queue.get(), 10)
        if got is not None:
            return got


@contextlib.asynccontextmanager
async def listening(settings: Any) -> AsyncIterator[tuple[Listener, asyncio.Queue[str | None]]]:
    """A started Listener on CHANNEL, connected, and the queue of what it hears; closed after."""
    heard: asyncio.Queue[str | None] = asyncio.Queue()
    listener = Listener(settings.database_url, CHANNEL, heard.put_nowait)
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        yield listener, heard
    finally:
        await listener.close()


async def test_a_listener_hears_notifications_and_is_told_when_it_connects(settings, db):
    async with listening(settings) as (_, heard):
        assert await asyncio.wait_for(heard.get(), 10) is None  # connected: catch up
        assert await _heard_after(db, heard, "first") == "first"


async def test_a_listener_reconnects_after_its_connection_is_terminated(settings, db):
    async with listening(settings) as (listener, heard):
        first = listener.connection
        assert first is not None
        await db.execute("SELECT pg_terminate_backend($1)", first.get_server_pid())
        for _ in range(500):  # 10 s at most
            if listener.connection is not None and listener.connection is not first:
                break
            await asyncio.sleep(0.02)
        assert await _heard_after(db, heard, "again") == "again"


async def test_a_periodic_job_that_fails_on_a_closed_connection_runs_again(settings):
    conn = await asyncpg.connect(settings.database_url)
    runs: list[str] = []

    async def job() -> None:
        if len(runs) == 1:
            runs.append("failed")
            await conn.fetchval("SELECT 1")  # closed below: asyncpg raises InterfaceError
        runs.append("ran")

    await conn.close()
    periodic = Periodic(0.01, job, logging.getLogger("test"), "the test job failed")
    await periodic.start()
    try:
        for _ in range(500):
            if runs.count("ran") >= 2:
                break
            await asyncio.sleep(0.01)
        assert runs[:3] == ["ran", "failed", "ran"]
    finally:
        await periodic.close()
