"""Every committed change onto a NATS JetStream stream (docs/events.md, "NATS JetStream").

With EHR_NATS_URL set, each `ehr serve` process runs a BrokerPublisher. It reads the
outbox with its own cursor ('nats', events/outbox.py): one node at a time claims the
cursor, publishes the next committed events in commit order, awaits every publish
acknowledgement, and only then advances the cursor and commits. A crash between the
acknowledgement and the commit republishes those events: they carry their event id as
`Nats-Msg-Id`, so JetStream drops the copies (within the stream's duplicate window).
If NATS is down the cursor stays where it is, the round is tried again with backoff,
and nothing else in the server waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from ..db.listen import Listener
from ..db.periodic import cancel
from ..db.pool import EVENTS_APPLICATION, create_pool
from ..store.repository import format_instant
from .outbox import NOTIFY_CHANNEL, Event, advance, claim, settled_after, start_cursor

log = logging.getLogger("headless_ehr.events.broker")

READER = "nats"  # its event_cursor row
BATCH = 500  # events per round: published pipelined, then their acks awaited together
ACK_TIMEOUT = 10.0  # seconds for a round's acknowledgements; then it is rolled back and tried again
FALLBACK_SECONDS = 5.0  # a round without a NOTIFY (a lost LISTEN connection, a commit under the watermark)
MAX_BACKOFF = 5.0  # seconds between attempts while NATS or the database is away
# A stream the server creates (it never changes an existing one: create your own first for
# other limits). Copies of a message id are dropped within the duplicate window: long enough
# for a node, or its replacement, to republish after a crash.
DUPLICATE_WINDOW = timedelta(minutes=10)
MAX_AGE = timedelta(days=7)


class StreamError(Exception):
    """Our stream cannot be made or used (e.g. another stream's subjects overlap ours)."""


# "NATS or the database is away or refused": the round is retried later, quietly.
_RETRIED = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    nats.errors.Error,
    StreamError,
)


def subject_of(prefix: str, event: Event) -> str:
    """`<prefix>.<ResourceType>.<create|update|delete>` (a patch is an update)."""
    return f"{prefix}.{event.resource_type}.{event.verb}"


def message_of(event: Event) -> bytes:
    """The message body: the change, not the resource (read it from the API, with your rights)."""
    return orjson.dumps(
        {
            "id": event.event_id,
            "seq": event.seq,
            "resourceType": event.resource_type,
            "resourceId": event.id,
            "versionId": str(event.version_id),
            "interaction": event.interaction,
            "time": format_instant(event.occurred_at),
        }
    )


Callback = Callable[[], Awaitable[None]]


async def connect(
    url: str, name: str = "headless-ehr", *, trouble: Callback | None = None, back: Callback | None = None
) -> NatsClient:
    """A NATS connection that keeps trying (the first time too: this waits until NATS
    answers) and reconnects for ever, noticing a dead server within seconds. trouble()
    runs on every failed attempt and on a lost connection, back() once reconnected."""

    async def on_error(exc: Exception) -> None:
        log.debug("NATS: %r", exc)
        if trouble is not None:
            await trouble()

    async def on_back() -> None:
        if back is not None:
            await back()

    return await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        connect_timeout=2,
        reconnect_time_wait=1,
        max_reconnect_attempts=-1,
        ping_interval=10,
        max_outstanding_pings=3,
        error_cb=on_error,
        disconnected_cb=trouble,
        reconnected_cb=on_back,
    )


async def ensure_stream(js: JetStreamContext, stream: str, prefix: str) -> None:
    """Create the stream (subjects `<prefix>.>`) unless it exists; an existing one is used as it is."""
    try:
        await js.stream_info(stream)
        return
    except nats.js.errors.NotFoundError:
        pass
    config = StreamConfig(
        name=stream,
        description="headless-ehr: every committed create, update and delete",
        subjects=[f"{prefix}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=MAX_AGE.total_seconds(),
        duplicate_window=DUPLICATE_WINDOW.total_seconds(),
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as refused:
        try:
            await js.stream_info(stream)  # another node created it meanwhile
        except nats.js.errors.NotFoundError:
            raise StreamError(f"NATS refused to create stream {stream}: {refused.description}") from None


@dataclass(frozen=True, slots=True)
class Round:
    """What one round did: events published (and marked sent), of which JetStream already had copies."""

    published: int
    duplicates: int


class BrokerPublisher:
    """Publishes the outbox to JetStream stream `stream`, on subjects under `prefix`."""

    def __init__(
        self,
        database_url: str,
        nats_url: str,
        stream: str,
        prefix: str,
        *,
        batch: int = BATCH,
        fallback_seconds: float = FALLBACK_SECONDS,
    ) -> None:
        self.database_url = database_url
        self.nats_url = nats_url
        self.stream = stream
        self.prefix = prefix
        self.batch = batch
        self.fallback_seconds = fallback_seconds
        self._pool: asyncpg.Pool | None = None
        self._listener = Listener(database_url, NOTIFY_CHANNEL, lambda _payload: self._wake.set())
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unreachable = False  # NATS is away: said once, and once when it is back

    async def open(self) -> None:
        """The database side: its pool (whose transactions the write watermark ignores) and
        its cursor, at the present unless it exists (a new deployment publishes from now on)."""
        self._pool = await create_pool(
            self.database_url, min_size=1, max_size=1, statement_timeout_ms=30_000, application_name=EVENTS_APPLICATION
        )
        async with self._pool.acquire() as conn:
            await start_cursor(conn, READER)

    async def start(self) -> None:
        """open(), then publish in the background until close(); NATS need not be up yet."""
        await self.open()
        self._listener.start()  # woken on every `ehr_outbox` NOTIFY (and after each reconnection)
        self._task = asyncio.create_task(self._run(), name="ehr-broker-publisher")

    async def close(self) -> None:
        """Stop: a round in flight is rolled back (its events are republished, and deduplicated, later)."""
        await cancel(self._task)
        self._task = None
        await self._listener.close()
        if self._nc is not None:
            self._unreachable = True  # closing is no outage: nothing to say
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = self._js = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def connect(self) -> None:
        """Connect to NATS and make sure the stream exists (once; the client reconnects by itself)."""
        if self._nc is not None and not self._nc.is_closed:
            return
        self._nc = self._js = None
        nc = await connect(self.nats_url, trouble=self._nats_away, back=self._nats_back)
        try:
            js = nc.jetstream(timeout=ACK_TIMEOUT)
            await ensure_stream(js, self.stream, self.prefix)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js = nc, js
        await self._nats_back()
        log.info("publishing events to NATS stream %s (subjects %s.>)", self.stream, self.prefix)

    async def _nats_away(self) -> None:
        if not self._unreachable:
            self._unreachable = True
            log.warning("NATS is unreachable: events wait in the outbox and are published once it is back")

    async def _nats_back(self) -> None:
        if self._unreachable:
            self._unreachable = False
            log.info("NATS is reachable again")

    async def publish(self, events: list[Event]) -> int:
        """Publish events in order, pipelined, and wait for all their acknowledgements;
        answers how many JetStream already held (dropped as duplicates). Raises when
        any was not acknowledged in ACK_TIMEOUT: then none may be marked sent."""
        assert self._js is not None, "connect() first"
        pending: list[asyncio.Future] = []
        try:
            for event in events:
                headers = {"Nats-Msg-Id": event.event_id}
                future = await self._js.publish_async(
                    subject_of(self.prefix, event), message_of(event), stream=self.stream, headers=headers
                )
                pending.append(future)
            acks = await asyncio.wait_for(asyncio.gather(*pending), ACK_TIMEOUT)
        finally:
            for future in pending:  # on failure: no ack is awaited any longer
                future.cancel()
        for ack in acks:
            if ack.stream != self.stream:
                raise StreamError(f"stored in stream {ack.stream}, not {self.stream}")
        return sum(1 for ack in acks if ack.duplicate)

    async def publish_next(self) -> Round | None:
        """One round: claim the cursor, publish the next committed events, advance, commit.
        None when another node holds the cursor (it is publishing them)."""
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            position = await claim(conn, READER)
            if position is None:
                return None
            events = await settled_after(conn, position, self.batch)
            if not events:
                return Round(0, 0)
            duplicates = await self.publish(events)  # acknowledged before marked sent
            await advance(conn, READER, events[-1].position)
        if duplicates:
            log.info("%d of %d events were already in stream %s (republished)", duplicates, len(events), self.stream)
        return Round(len(events), duplicates)

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            if backoff:
                await asyncio.sleep(backoff)
            try:
                await self.connect()
                self._wake.clear()  # a NOTIFY from now on wakes the next wait
                done = await self.publish_next()
            except _RETRIED as exc:
                if not backoff:
                    log.warning("events are not reaching NATS yet (%s); retrying", repr(exc))
                backoff = min(MAX_BACKOFF, backoff * 2 or 0.25)
                continue
            except Exception:  # a bug must not end publication for good: logged, retried
                log.exception("publishing events to NATS failed; retrying")
                backoff = MAX_BACKOFF
                continue
            if backoff:
                log.info("events reach NATS stream %s again", self.stream)
            backoff = 0.0
            if done is not None and done.published == self.batch:
                continue  # more are waiting
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.fallback_seconds)
