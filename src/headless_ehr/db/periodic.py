"""A node's background polling of the database (signing keys, revocations, event retention), and
stopping a background task."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

RECANCEL_SECONDS = 1.0


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has ended (its cleanup run).

    Cancelled again every RECANCEL_SECONDS while it runs on: in Python 3.11
    `asyncio.wait_for` can swallow a cancellation that arrives as the awaited thing
    completes, and a worker's `while True` loop then carries on. Awaiting such a task once
    hung shutdowns (seen as test teardowns that never ended). The one way our code stops a
    task: every background loop goes through here."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
    if not task.cancelled():
        task.exception()  # retrieved: a failure on the way out is not logged as never retrieved


class Periodic:
    """Run `job` once on start, then every `seconds` until closed. A failure on start is
    raised (the node has nothing yet); later any failure is logged (`failure`, on `log`)
    and the job tried again next time: the node keeps what it has."""

    def __init__(self, seconds: float, job: Callable[[], Awaitable[None]], log: logging.Logger, failure: str) -> None:
        self.seconds = seconds
        self.job = job
        self.log = log
        self.failure = failure
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.job()
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.seconds)
            try:
                await self.job()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                self.log.warning(self.failure, exc_info=True)
            except Exception:  # a fault of ours must not end the polling for good: logged, tried next time
                self.log.exception(self.failure)
