"""A background worker's LISTEN connection, kept open for as long as the worker runs.

The outbox relay, the broker publisher, the rest-hook delivery and the WebSocket
fan-out are woken by NOTIFY rather than polling (docs/events.md). Each holds one
Listener: a connection of its own that LISTENs on one channel and is made again, with
backoff, whenever it is lost (a restart, a failover, pg_terminate_backend). A NOTIFY
sent while nobody listened is gone, so after every (re)connection `heard(None)` is
called: the worker catches up by reading its tables, which are the truth. A connection
that a dead network left half-open is noticed by a probe every PROBE_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Callable

import asyncpg

from .periodic import cancel
from .pool import EVENTS_APPLICATION, server_settings

log = logging.getLogger("headless_ehr.db")

PROBE_SECONDS = 30.0  # an idle connection is checked this often
PROBE_TIMEOUT = 5.0  # seconds a probe may take before the connection is taken for lost
FIRST_BACKOFF = 0.1  # seconds before the first reconnection attempt (doubling, with jitter)
MAX_BACKOFF = 5.0

Heard = Callable[[str | None], None]  # a NOTIFY's payload; None: (re)connected, catch up


class Listener:
    """LISTEN on `channel` (as `application_name`: the event workers' by default, whose
    transactions the write watermark ignores) and call `heard` for each notification."""

    def __init__(self, dsn: str, channel: str, heard: Heard, *, application_name: str = EVENTS_APPLICATION) -> None:
        self.dsn = dsn
        self.channel = channel
        self.heard = heard
        self.application_name = application_name
        self.connected = asyncio.Event()  # set while the connection is up
        self.connection: asyncpg.Connection | None = None  # that connection (tests end it to see a reconnection)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"listen-{self.channel}")

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.heard(payload)

    async def _run(self) -> None:
        backoff = FIRST_BACKOFF
        while True:
            conn: asyncpg.Connection | None = None
            try:
                settings = server_settings(application_name=self.application_name)
                conn = await asyncio.wait_for(asyncpg.connect(self.dsn, server_settings=settings), PROBE_TIMEOUT * 2)
                lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                conn.add_termination_listener(functools.partial(_resolve, lost))
                await conn.add_listener(self.channel, self._notified)
                self.connection = conn
                self.connected.set()
                backoff = FIRST_BACKOFF
                self.heard(None)  # whatever committed while nobody listened
                while not lost.done():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(lost), PROBE_SECONDS)
                        break
                    await conn.fetchval("SELECT 1", timeout=PROBE_TIMEOUT)
                log.warning("the LISTEN connection on %s was lost; reconnecting", self.channel)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("the LISTEN connection on %s failed (%r); reconnecting", self.channel, error)
            except Exception:  # a fault of ours must not end the worker's wake-ups: logged, tried again
                log.exception("the LISTEN connection on %s failed; reconnecting", self.channel)
            finally:
                self.connected.clear()
                self.connection = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            self.heard(None)  # the worker polls meanwhile; a wake-up now costs one read
            await asyncio.sleep(backoff * (1 + random.random()))
            backoff = min(backoff * 2, MAX_BACKOFF)


def _resolve(future: asyncio.Future[None], *_args: object) -> None:
    if not future.done():
        future.set_result(None)
