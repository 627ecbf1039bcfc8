"""Request events into the chain in batches, before each response leaves.

A request's event is queued and the request waits until the batch holding it is
committed (group commit: one short locked transaction per batch, started as soon as
the previous one ends, so batches grow with load rather than adding a fixed delay).
A client that has a response has its audit record on disk; a crash loses nothing
answered. Each batch also moves the write-side events that writes committed into
audit_pending (audit/pending.py) into the chain: at once when this node wrote, at
least every second otherwise (events a crashed node left behind). The queue is
bounded: when full, requests wait for room rather than events being dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg

from . import pending
from .chain import Chain, Entry
from .touched import Draft, complete

log = logging.getLogger("headless_ehr.audit")
# errors of an event's data (asyncpg's argument encoding, PostgreSQL class 22), not of the database
_UNWRITABLE = (asyncpg.DataError, UnicodeError)
SWEEP_SECONDS = 1.0  # audit_pending is emptied at least this often by every node


class AuditRecorder:
    def __init__(
        self, pool: asyncpg.Pool, *, interval: float = 0.1, capacity: int = 20_000, sync: bool = False
    ) -> None:
        self._pool = pool
        self._sync = sync
        self._chain = Chain()
        self._interval = interval
        self._capacity = capacity
        self._pending: list[Entry | Draft] = []
        self._waiters: list[asyncio.Future[None]] = []  # writes waiting for the next flush
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._sweep_due = True  # the first batch takes what an earlier run left pending
        self._next_sweep = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def record(self, entry: Entry | Draft) -> None:
        """Queue a request's event and return once it is committed."""
        while len(self._pending) >= self._capacity:
            self._room.clear()
            self._wake.set()
            await self._room.wait()
        self._pending.append(entry)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        self._wake.set()
        await asyncio.shield(done)

    async def flush(self) -> None:
        """Commit everything queued so far, and the pending write-side events (tests, shutdown)."""
        if self._task is None or self._task.done():
            return
        self._sweep_due = True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(done)  # released after the flush that follows any in flight
        self._wake.set()
        await done

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            sweep = self._sweep_due or pending.writes_since_sweep() > 0 or time.monotonic() >= self._next_sweep
            if not self._pending and not sweep:
                self._release(self._take_waiters())
                if self._closing:
                    return
                continue
            entries, self._pending = self._pending, []
            waiters = self._take_waiters()
            self._room.set()
            self._sweep_due = False
            try:
                if sweep:
                    pending.swept()
                    self._next_sweep = time.monotonic() + SWEEP_SECONDS
                async with self._pool.acquire() as conn:
                    entries = await complete(conn, entries)
                    await self._chain.append(conn, entries, pending=sweep, sync=self._sync)
            except asyncio.CancelledError:
                raise
            except _UNWRITABLE:  # something in an event, not the database: write the others
                await self._append_singly(entries)
            except Exception:  # the database is away: keep the events, retry on the next tick
                log.exception("audit: could not append %d events; retrying", len(entries))
                self._pending[:0] = entries
                self._waiters[:0] = waiters
                self._sweep_due = True
                await asyncio.sleep(self._interval)
                continue
            self._release(waiters)
            if self._closing and not self._pending:
                self._release(self._take_waiters())
                return

    async def _append_singly(self, entries: list[Entry | Draft]) -> None:
        """One by one, so one event the database refuses cannot block the log; it is logged whole."""
        for item in entries:
            try:
                async with self._pool.acquire() as conn:
                    (entry,) = await complete(conn, [item])
                    await self._chain.append(conn, [entry], sync=self._sync)
            except _UNWRITABLE:
                log.error("audit: event refused by the database, not recorded: %r", item)

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
