"""This node's runner of asynchronous requests (bulk/async_jobs.py): claims open ones,
any node's, one at a time, keeps the lease alive while one runs, and sweeps expired ones.

Running a request is the REST layer's (rest/asynchronous.py replays it through the FHIR
endpoint); it is handed in, so this layer never imports the one above it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

from ..db.periodic import cancel
from . import async_jobs
from .async_jobs import AsyncRequest
from .export_worker import POLL_SECONDS, SWEEP_SECONDS, TRANSIENT

log = logging.getLogger("headless_ehr.bulk.async")

Execute = Callable[[AsyncRequest], Awaitable[None]]


class AsyncWorker:
    def __init__(self, pool: asyncpg.Pool, execute: Execute) -> None:
        self.pool = pool
        self.execute = execute
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._swept = -SWEEP_SECONDS
        self.current: AsyncRequest | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        """A request was just accepted on this node: look now."""
        self._wake.set()

    async def close(self) -> None:
        current = self.current
        await cancel(self._task)
        if current is not None:  # shut down mid-request: its transaction rolled back; the next node goes on
            with contextlib.suppress(*TRANSIENT, asyncpg.PostgresError, OSError):
                await async_jobs.release(self.pool, current)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                if time.monotonic() - self._swept >= SWEEP_SECONDS:
                    self._swept = time.monotonic()
                    await async_jobs.expired(self.pool)
                request = await async_jobs.claim(self.pool)
                if request is not None:
                    await self._run(request)
                    continue
            except (*TRANSIENT, asyncpg.PostgresError, OSError):
                log.warning("async requests: the database is unavailable; trying again", exc_info=True)
            except Exception:  # never let one bad request stop this node's others for good
                log.exception("async requests: unexpected failure; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    async def _run(self, request: AsyncRequest) -> None:
        self.current = request
        heartbeat = asyncio.create_task(self._heartbeat(request))
        try:
            await self.execute(request)
        finally:
            await cancel(heartbeat)
            self.current = None

    async def _heartbeat(self, request: AsyncRequest) -> None:
        while True:
            await asyncio.sleep(async_jobs.LEASE_SECONDS / 3)
            with contextlib.suppress(*TRANSIENT, asyncpg.PostgresError, OSError):
                await async_jobs.renew(self.pool, request)
