"""A node's background polling of the database (signing keys, revocations, event retention), and
stopping a background task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task and wait until it has ended (its cleanup run)."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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
