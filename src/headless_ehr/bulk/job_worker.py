"""The skeleton every background job runner shares ($export, $import, async requests): a loop
that sweeps expired jobs every SWEEP_SECONDS, claims open work (any node's) up to
`concurrency` at a time, keeps each claim's lease alive while it runs, rides out a lost
database, and on shutdown releases what it holds so the next node need not wait for the lease.

A kind supplies its hooks (claim, run, renew, release, sweep); the rules above live here only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Generic, TypeVar

import asyncpg

from ..db.periodic import cancel

POLL_SECONDS = 1.0  # look for claimable work this often (and at once on a kick-off here)
SWEEP_SECONDS = 60.0  # remove expired jobs (and their files) this often
# a lost connection: leave the work to be taken over (by this node too), never fail it
TRANSIENT = (ConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError, asyncpg.ConnectionFailureError)
UNAVAILABLE = (*TRANSIENT, asyncpg.PostgresError, OSError)  # what a lease renewal or release may meet

C = TypeVar("C")  # one claim of one kind: a job, an input, a request


class JobWorker(Generic[C]):
    """This node's runner of one kind of job."""

    what = "jobs"  # for the log: "bulk export worker", ...
    lease_seconds = 30.0
    concurrency = 1

    def __init__(self, pool: asyncpg.Pool, log: logging.Logger) -> None:
        self.pool = pool  # the job rows
        self.log = log
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: dict[asyncio.Task[None], C] = {}
        self._swept = -SWEEP_SECONDS

    # the hooks of a kind
    async def claim(self) -> C | None:
        raise NotImplementedError

    async def run(self, claim: C) -> None:
        raise NotImplementedError

    async def renew(self, claim: C) -> bool:
        raise NotImplementedError

    async def release(self, claim: C) -> None:
        raise NotImplementedError

    async def sweep(self) -> None:
        raise NotImplementedError

    @property
    def current(self) -> C | None:
        """A claim this node is running, if any."""
        return next(iter(self._running.values()), None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        """Work was just accepted on this node: look now."""
        self._wake.set()

    async def close(self) -> None:
        await cancel(self._task)
        claims = list(self._running.values())
        await asyncio.gather(*(cancel(task) for task in list(self._running)))
        for claim in claims:  # shut down mid-run: its transaction rolled back; the next node goes on at once
            with contextlib.suppress(*UNAVAILABLE):
                await self.release(claim)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                if time.monotonic() - self._swept >= SWEEP_SECONDS:
                    self._swept = time.monotonic()
                    await self.sweep()
                if len(self._running) < self.concurrency:
                    claim = await self.claim()
                    if claim is not None:
                        task = asyncio.create_task(self._run(claim))
                        self._running[task] = claim
                        task.add_done_callback(self._done)
                        continue
            except UNAVAILABLE:
                self.log.warning("%s: the database is unavailable; trying again", self.what, exc_info=True)
            except Exception:  # never let one bad job stop this node's others for good
                self.log.exception("%s: unexpected failure; trying again", self.what)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        if not task.cancelled() and task.exception() is not None:  # a lost connection: the lease runs out
            self.log.warning("%s: a run stopped; it is taken over", self.what, exc_info=task.exception())
        self._wake.set()  # a slot is free

    async def _run(self, claim: C) -> None:
        run = asyncio.current_task()
        assert run is not None
        heartbeat = asyncio.create_task(self._heartbeat(claim, run))
        try:
            await self.run(claim)
        finally:
            await cancel(heartbeat)

    def stops_when_lost(self, claim: C) -> bool:
        """Whether a run whose lease renewal failed (cancelled, taken over) is stopped at once;
        by default it notices at its next fenced commit."""
        return False

    async def _heartbeat(self, claim: C, run: asyncio.Task[None]) -> None:
        """Renew the lease while a run is slow between its own (lease-renewing) commits."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            with contextlib.suppress(*UNAVAILABLE):
                if not await self.renew(claim) and self.stops_when_lost(claim):
                    run.cancel()
                    return
