"""Request events into the audit log, each committed before its response leaves.

A request's event joins the open batch and the request waits until that batch is
committed to the queue table audit_pending (group commit: one short insert per batch,
started as soon as the previous one ends, so batches grow with load rather than adding a
fixed delay). A client that has a response has its audit record in the database; a crash
of this node loses nothing answered. A second task moves what is queued (these events,
and those that writes committed in their own statements, audit/pending.py) into the hash
chain every `interval` while this node queues events, and at least every second (what a
crashed node left behind). The queue in memory is bounded: when full, requests wait for
room rather than events being dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from ..db.periodic import cancel
from . import pending
from .chain import RETRYABLE, VACUUM_EVERY, Entry, chain_pending, queue, vacuum_queues
from .touched import Draft, complete

log = logging.getLogger("headless_ehr.audit")
CHAIN_SECONDS = 1.0  # audit_pending is chained at least this often by every node


_NOTHING = Entry("", None, b"", None)  # type: ignore[arg-type]  # flush()'s place in a batch


class _Batch:
    """Events committed together, and the requests waiting for them."""

    __slots__ = ("done", "items", "joined")

    def __init__(self) -> None:
        self.items: list[Entry | Draft] = []
        self.done = asyncio.Event()  # each waiter's own future: a cancelled request cancels only itself
        self.joined: list[_Batch] = []  # batches folded into this one after a failed append

    def release(self) -> None:
        self.done.set()
        for other in self.joined:
            other.release()


class AuditRecorder:
    def __init__(
        self, pool: asyncpg.Pool, *, interval: float = 0.1, capacity: int = 20_000, sync: bool = False
    ) -> None:
        self._pool = pool
        self._sync = sync
        self._interval = interval
        self._capacity = capacity
        self._open = _Batch()  # the batch requests join now; the next one to be appended
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._chainer: asyncio.Task[None] | None = None
        self._chain_now: list[asyncio.Future[None]] = []  # flush() calls waiting for the next chaining
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        self._chainer = asyncio.create_task(self._chain())

    async def record(self, entry: Entry | Draft) -> None:
        """Queue a request's event and return once it is committed."""
        while len(self._open.items) >= self._capacity:
            self._room.clear()
            self._wake.set()
            await self._room.wait()
        batch = self._open
        batch.items.append(entry)
        self._wake.set()
        self._ensure_running()
        await batch.done.wait()

    def _ensure_running(self) -> None:
        """A recorder whose task died (a bug) would leave every request waiting: start it again."""
        if self._task is not None and self._task.done() and not self._closing:
            if not self._task.cancelled() and self._task.exception() is not None:
                log.error("audit: the recorder stopped; starting it again", exc_info=self._task.exception())
            self._task = asyncio.create_task(self._run())

    async def flush(self) -> None:
        """Commit everything queued so far and chain it, with every event written before (tests)."""
        if self._task is None or self._task.done():
            return
        batch = self._open  # committed after any batch in flight
        batch.items.append(_NOTHING)
        self._wake.set()
        await batch.done.wait()
        chained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chain_now.append(chained)
        await chained

    async def _run(self) -> None:
        while True:
            if not self._open.items:
                if self._closing:
                    self._open.release()
                    return
                await self._wake.wait()  # no timeout: nothing is due here until an event comes
                self._wake.clear()
                continue
            self._wake.clear()
            batch, self._open = self._open, _Batch()
            self._room.set()
            try:
                async with self._pool.acquire() as conn:
                    entries = await complete(conn, [i for i in batch.items if i is not _NOTHING])
                    await queue(conn, entries, sync=self._sync)
            except asyncio.CancelledError:
                raise
            except RETRYABLE:  # the database is away: keep the events, retry on the next tick
                log.exception("audit: could not queue %d events; retrying", len(batch.items))
                batch.items += self._open.items
                batch.joined.append(self._open)
                self._open = batch
                await asyncio.sleep(self._interval)
                continue
            except Exception:  # something in an event: write the others
                log.exception("audit: could not queue a batch of %d events; writing them one by one", len(batch.items))
                await self._append_singly(batch.items)
            pending.queued(len(batch.items))
            batch.release()

    async def _chain(self) -> None:
        """Chain what is queued: soon after this node queued something, else every second;
        vacuum the queues after every VACUUM_EVERY events chained."""
        due, chained = 0.0, 0
        while True:
            flushing, self._chain_now = self._chain_now, []
            if flushing or pending.writes_since_sweep() or time.monotonic() >= due:
                pending.swept()
                due = time.monotonic() + CHAIN_SECONDS
                try:
                    async with self._pool.acquire() as conn:
                        chained += await chain_pending(conn)
                        if chained >= VACUUM_EVERY:
                            chained = 0
                            await vacuum_queues(conn)
                except asyncio.CancelledError:
                    raise
                except Exception:  # kept in audit_pending: the next round takes them
                    log.exception("audit: could not chain the queued events; retrying")
                for done in flushing:
                    if not done.done():
                        done.set_result(None)
            await asyncio.sleep(self._interval)

    async def _append_singly(self, entries: list[Entry | Draft]) -> None:
        """One by one, so one event the database refuses cannot block the log; it is logged whole."""
        for item in entries:
            if item is _NOTHING:
                continue
            try:
                async with self._pool.acquire() as conn:
                    await queue(conn, await complete(conn, [item]), sync=self._sync)
            except Exception:
                log.exception("audit: event not recorded: %r", item)

    async def close(self) -> None:
        """Commit what is queued, chain it, then stop (what the chaining could not take in
        time stays in audit_pending for the next start or another node)."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._task, 10)
        except TimeoutError:
            log.error("audit: %d events not written at shutdown", len(self._open.items))
            await cancel(self._task)
        await cancel(self._chainer)
        try:
            async with self._pool.acquire() as conn:
                await asyncio.wait_for(chain_pending(conn), 10)
        except Exception:
            log.warning("audit: queued events left to chain at the next start", exc_info=True)
