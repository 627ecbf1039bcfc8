"""Large request bodies are processed off the event loop.

Parsing, validating and indexing a 16 MiB transaction is seconds of Python work; on
the event loop it would hold up every other request of the process (a `GET
/metadata` waited 10 s). A body over OFFLOAD_BYTES is therefore handled in a worker
thread that runs its own event loop on its own database connection: the interpreter
switches threads every few milliseconds (sys.getswitchinterval), so the main loop
keeps answering while the big request runs. Small bodies stay on the loop, where
a thread and a connection would cost more than the work.

A full garbage collection walks every live object, the big body's millions among
them, and stops every thread meanwhile (a second, measured); while a large body is
processed full collections are postponed and the middle generation is collected
more often, in shorter passes. Parsed bodies hold no reference cycles, so reference
counting frees them. The switch interval is shortened meanwhile too: a request on the
loop waits for the interpreter at each of its system calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import asyncpg
from starlette.requests import Request

from ..db.pool import server_settings
from ..store import ResourceStore
from .context import REPLAY_COMPLETION, ReplayAbandoned, replay_connection, store_of

T = TypeVar("T")

OFFLOAD_BYTES = 256 * 1024
# Offloaded requests at once per process (each holds a thread and a connection);
# more wait their turn.
MAX_OFFLOADED = max(2, os.cpu_count() or 1)

Work = Callable[[ResourceStore, asyncpg.Connection | None], Awaitable[T]]


_offloaded = 0  # large bodies being processed (changed on the event loop thread only)
_threshold: tuple[int, int, int] = (0, 0, 0)
_switch_interval = 0.0
OFFLOADED_SWITCH_INTERVAL = 0.001  # seconds (Python's default is 0.005)


@contextlib.contextmanager
def _loop_favoured() -> Iterator[None]:
    """While large bodies are processed: no full collections, shorter passes of the
    middle generation, and a shorter thread switch interval."""
    global _offloaded, _threshold, _switch_interval
    if _offloaded == 0:
        _threshold, _switch_interval = gc.get_threshold(), sys.getswitchinterval()
        gc.set_threshold(_threshold[0], min(_threshold[1], 5), 1_000_000)
        sys.setswitchinterval(min(_switch_interval, OFFLOADED_SWITCH_INTERVAL))
    _offloaded += 1
    try:
        yield
    finally:
        _offloaded -= 1
        if _offloaded == 0:
            gc.set_threshold(*_threshold)
            sys.setswitchinterval(_switch_interval)


def _slots(request: Request) -> asyncio.Semaphore:
    state = request.app.state
    slots = getattr(state, "offload_slots", None)
    if slots is None:
        slots = state.offload_slots = asyncio.Semaphore(MAX_OFFLOADED)
    return slots


async def run(request: Request, size: int, work: Work[T]) -> T:
    """work(store, conn) for a request with a body of size bytes: on the event loop with
    the app's store (conn None), or, for a large body, in a worker thread with a store
    bound to a connection of its own."""
    store = store_of(request)
    replayed = replay_connection(request)
    if replayed is not None and size < OFFLOAD_BYTES:  # an asynchronous request: in its worker's transaction
        return await work(store.bound(replayed), replayed)
    if size < OFFLOAD_BYTES:
        return await work(store, None)
    settings = request.app.state.settings
    # a large asynchronous request completes in the thread's transaction, with its writes
    complete = request.scope.get(REPLAY_COMPLETION) if replayed is not None else None

    async def in_thread() -> T:
        conn = await asyncpg.connect(
            settings.database_url,
            server_settings=server_settings(statement_timeout_ms=settings.statement_timeout_ms),
        )
        try:
            if complete is None:
                return await work(store.bound(conn), conn)
            try:
                async with conn.transaction():
                    answer = await work(store.bound(conn), conn)
                    await complete(conn, answer)
            except ReplayAbandoned:  # rolled back; the completion tells its worker why
                pass
            return answer
        finally:
            await conn.close()

    async with _slots(request):
        with _loop_favoured():
            return await asyncio.to_thread(asyncio.run, in_thread())
