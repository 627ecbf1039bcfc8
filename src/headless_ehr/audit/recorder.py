"""Events into the chain in batches, off the request path.

Reads are queued and flushed every `interval` or `batch` events by one task per node
(group commit: one short locked transaction per batch). A write's event is queued
the same way but its request waits for the flush that commits it, which starts at
once: a client that has a write's response has its audit record on disk. The queue
is bounded: when full, requests wait for room rather than events being dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from .chain import Entry, append

log = logging.getLogger("headless_ehr.audit")
# errors of an event's data (asyncpg's argument encoding, PostgreSQL class 22), not of the database
_UNWRITABLE = (asyncpg.DataError, UnicodeError)


class AuditRecorder:
    def __init__(self, pool: asyncpg.Pool, *, interval: float = 0.1, batch: int = 500, capacity: int = 20_000) -> None:
        self._pool = pool
        self._interval = interval
        self._batch = batch
        self._capacity = capacity
        self._pending: list[Entry] = []
        self._waiters: list[asyncio.Future[None]] = []  # writes waiting for the next flush
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def record(self, entry: Entry) -> None:
        """Queue a read's event (returns at once unless the queue is full)."""
        while len(self._pending) >= self._capacity:
            self._room.clear()
            self._wake.set()
            await self._room.wait()
        self._pending.append(entry)
        if len(self._pending) >= self._batch:
            self._wake.set()

    async def record_durable(self, entry: Entry) -> None:
        """Queue a write's event and return once it is committed."""
        await self.record(entry)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        self._wake.set()
        await asyncio.shield(done)

    async def flush(self) -> None:
        """Commit everything queued so far (tests, shutdown)."""
        if self._task is None or self._task.done():
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(done)  # released after the flush that follows any in flight
        self._wake.set()
        await done

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            if not self._pending:
                self._release(self._take_waiters())
                if self._closing:
                    return
                continue
            entries, self._pending = self._pending, []
            waiters = self._take_waiters()
            self._room.set()
            try:
                async with self._pool.acquire() as conn:
                    await append(conn, entries)
            except asyncio.CancelledError:
                raise
            except _UNWRITABLE:  # something in an event, not the database: write the others
                await self._append_singly(entries)
            except Exception:  # the database is away: keep the events, retry on the next tick
                log.exception("audit: could not append %d events; retrying", len(entries))
                self._pending[:0] = entries
                self._waiters[:0] = waiters
                await asyncio.sleep(self._interval)
                continue
            self._release(waiters)

    async def _append_singly(self, entries: list[Entry]) -> None:
        """One by one, so one event the database refuses cannot block the log; it is logged whole."""
        for entry in entries:
            try:
                async with self._pool.acquire() as conn:
                    await append(conn, [entry])
            except _UNWRITABLE:
                log.error("audit: event refused by the database, not recorded: %r", entry.content[:4000])

    def _take_waiters(self) -> list[asyncio.Future[None]]:
        waiters, self._waiters = self._waiters, []
        return waiters

    @staticmethod
    def _release(waiters: list[asyncio.Future[None]]) -> None:
        for done in waiters:
            if not done.done():
                done.set_result(None)

    async def close(self) -> None:
        """Flush what is queued, then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._task, 10)
        except TimeoutError:
            log.error("audit: %d events not written at shutdown", len(self._pending))
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
