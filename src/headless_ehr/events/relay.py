"""The subscription relay: committed events to per-subscription notifications.

One task per `ehr serve` process. Woken by NOTIFY on `ehr_outbox` (a listening
connection of its own, reconnected when lost: db/listen.py) and by a slow poll, it claims the
'subscriptions' cursor (events/outbox.py: one node at a time, in commit order), and for
each batch of settled events finds the subscriptions they match by running each
subscription's search as its owner with `_id=<the batch's ids>`: the same code as a
search, the owner's rights applied by it, no second matcher. Matches become
subscription_notification rows numbered per subscription (eventNumber), the cursor
moves past the batch, and `ehr_events` is NOTIFYed, all in one transaction: a crash
anywhere repeats the batch, never numbers an event twice.

What a match means (docs/events.md): the search sees the resource as it is when the
relay handles the event (milliseconds after commit); a deletion has nothing left to
search, so it matches only triggers without parameters, and only for an owner who may
search every resource of the type (such a trigger matches every event of the type
without a search, whatever happened to the resource since).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from ..auth.policies import Policies
from ..auth.principal import Principal
from ..db.listen import Listener
from ..db.periodic import cancel
from ..fhir.outcome import FhirError
from ..store.repository import ResourceStore
from .outbox import EVENTS_CHANNEL, NOTIFY_CHANNEL, Event, Position, advance, claim, settled_after, start_cursor
from .owner import owner_principal, owner_with_policy
from .subscription import Trigger

log = logging.getLogger("headless_ehr.events")

CURSOR = "subscriptions"
BATCH_SIZE = 500  # events per relay transaction
IDS_PER_SEARCH = 100  # `_id` values per matching search
MAX_NOTIFY_BYTES = 7900  # PostgreSQL refuses a NOTIFY payload of 8000 bytes or more
POLL_SECONDS = 1.0  # the fallback when no NOTIFY comes (a lost listening connection)
BUSY_POLL_SECONDS = 0.02  # just after activity: an event may await an older transaction's commit
BUSY_WINDOW_SECONDS = 0.5
CLOSE_SECONDS = 5.0  # how long close() waits for the batch in hand

_GENERATION = "SELECT generation FROM subscription_generation"
_SUBSCRIPTIONS = """
SELECT id, status, channel, triggers, owner, since_at, since_seq, end_at FROM subscription_state
WHERE status <> 'off'
"""
_NUMBER = (
    "UPDATE subscription_state SET events_since_start = events_since_start + $2"
    " WHERE id = $1 AND status <> 'off' RETURNING events_since_start"
)
_INSERT = """
INSERT INTO subscription_notification
    (subscription_id, event_number, event_id, event_seq, resource_type, resource_id, version_id, interaction,
    occurred_at)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::bigint[], $5::text[], $6::text[], $7::integer[],
    $8::text[], $9::timestamptz[])
"""


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A subscription as the relay matches it."""

    id: str
    status: str
    channel: str
    triggers: tuple[Trigger, ...]
    owner: Principal  # without its policy (added per batch: policies change)
    owner_key: str  # its owner's claims (JSON): subscriptions of one owner share their searches
    since: Position  # events at or before this position are not its
    end_at: datetime | None


@dataclass(frozen=True, slots=True)
class Notification:
    subscription_id: str
    event_number: int
    event: Event


class Relay:
    """The relay of one node (start/close), and one batch at a time (relay_once)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: ResourceStore,
        policies: Policies | None,
        dsn: str | None = None,
        *,
        batch_size: int = BATCH_SIZE,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.pool = pool  # the events pool (EVENTS_APPLICATION): never writes a resource row
        self.store = store  # searches run as each subscription's owner
        self.policies = policies
        self.dsn = dsn  # for the listening connection; None: poll only
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._generation: int | None = None
        self._subscriptions: list[Subscribed] = []
        self._runner: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        self._stopping = False
        self._active_at = 0.0

    async def start(self) -> None:
        async with self.pool.acquire() as conn:
            await start_cursor(conn, CURSOR)
        self._stopping = False
        if self.dsn is not None:  # woken on every `ehr_outbox` NOTIFY
            self._listener = Listener(self.dsn, NOTIFY_CHANNEL, lambda _payload: self._wake.set())
            self._listener.start()
        self._runner = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop after the batch in hand (its transaction ends, its cursor lock with it);
        cancelled only if that takes longer than CLOSE_SECONDS."""
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._runner), CLOSE_SECONDS)
            await cancel(self._runner)
        self._runner = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None

    def wake(self) -> None:
        self._wake.set()

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            busy = time.monotonic() - self._active_at < BUSY_WINDOW_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), BUSY_POLL_SECONDS if busy else self.poll_seconds)
            self._wake.clear()
            if self._stopping:
                return
            try:
                while await self.relay_once() >= self.batch_size and not self._stopping:
                    pass  # a full batch: more are waiting
            except Exception:  # the relay outlives any one failure: it retries the batch (nothing was committed)
                log.warning("the subscription relay failed; retrying", exc_info=True)
                await asyncio.sleep(self.poll_seconds)

    # -- one batch -------------------------------------------------------------------------

    async def relay_once(self) -> int:
        """Handle the next batch of settled events; returns how many (0: none, or another
        node holds the cursor)."""
        async with self.pool.acquire() as conn, conn.transaction():
            position = await claim(conn, CURSOR)
            if position is None:
                return 0
            events = await settled_after(conn, position, self.batch_size)
            if not events:
                return 0
            self._active_at = time.monotonic()
            # read after the events: every subscription written before them is visible
            subscriptions = await self._current(conn)
            matched = await self._match(subscriptions, events)
            notifications = await _record(conn, matched)
            await advance(conn, CURSOR, events[-1].position)
            channels = {s.id: s.channel for s in subscriptions}
            for payload in notify_payloads(notifications, channels):
                await conn.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, payload)
        return len(events)

    async def _current(self, conn: asyncpg.Connection) -> list[Subscribed]:
        """The subscriptions not off, reloaded when any Subscription's state changed."""
        generation = await conn.fetchval(_GENERATION)
        if generation != self._generation:
            rows = await conn.fetch(_SUBSCRIPTIONS)
            self._subscriptions = [_subscribed(r) for r in rows]
            self._generation = generation
        return self._subscriptions

    async def _match(self, subscriptions: list[Subscribed], events: list[Event]) -> dict[str, list[Event]]:
        """subscription id -> the events it matched, in commit order."""
        out: dict[str, list[Event]] = {}
        types = {e.resource_type for e in events}
        # (owner, type, params) -> id -> matched: one search per owner and criteria per batch
        memo: dict[tuple[str, str, tuple[tuple[str, str], ...]], dict[str, bool]] = {}
        for sub in subscriptions:
            if not any(t.resource_type in types for t in sub.triggers):
                continue  # nothing of its types in this batch: no policy, no search
            mine = [e for e in events if e.position > sub.since and (sub.end_at is None or e.occurred_at <= sub.end_at)]
            if not mine:
                continue
            try:
                owner = await owner_with_policy(sub.id, sub.owner, self.policies)
                hits: set[int] = set()
                for trigger in sub.triggers:
                    known = memo.setdefault((sub.owner_key, trigger.resource_type, trigger.params), {})
                    hits |= await self._matches(owner, trigger, mine, known)
            except FhirError as error:  # the owner may no longer search it (403), a parameter gone (400)
                log.warning("Subscription/%s cannot be matched: %s", sub.id, error.issues[0].diagnostics)
                continue
            if hits:
                out[sub.id] = [e for e in mine if e.seq in hits]
        return out

    async def _matches(
        self, owner: Principal, trigger: Trigger, events: list[Event], known: dict[str, bool]
    ) -> set[int]:
        """The seqs of the events the trigger matches (known: ids already searched, and
        whether they matched, for this owner and trigger)."""
        candidates = [
            e
            for e in events
            if e.resource_type == trigger.resource_type
            and (trigger.interactions is None or e.verb in trigger.interactions)
        ]
        if not candidates:
            return set()
        if not trigger.params and owner.access("search", trigger.resource_type) is None:
            return {e.seq for e in candidates}  # every resource of the type, deleted or not: nothing to search
        live = [e for e in candidates if e.interaction != "delete"]
        ids = [i for i in dict.fromkeys(e.id for e in live) if i not in known]
        for start in range(0, len(ids), IDS_PER_SEARCH):
            chunk = ids[start : start + IDS_PER_SEARCH]
            params = [*trigger.params, ("_id", ",".join(chunk)), ("_count", str(len(chunk)))]
            page = await self.store.search(owner, trigger.resource_type, params, strict=True)
            found = {s.id for s in page.entries}
            known.update((i, i in found) for i in chunk)
        return {e.seq for e in live if known.get(e.id)}


def _subscribed(row: asyncpg.Record) -> Subscribed:
    return Subscribed(
        row["id"],
        row["status"],
        row["channel"],
        tuple(Trigger.of(t) for t in orjson.loads(row["triggers"])),
        owner_principal(orjson.loads(row["owner"])),
        row["owner"],
        (_aware(row["since_at"]), row["since_seq"]),
        row["end_at"],
    )


def _aware(at: datetime) -> datetime:
    """asyncpg reads '-infinity' (the column's default) as a naive datetime.min, which an
    event's aware timestamp cannot be compared with."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


async def _record(conn: asyncpg.Connection, matched: dict[str, list[Event]]) -> list[Notification]:
    """Number each subscription's matches after its last eventNumber and store them."""
    out: list[Notification] = []
    for sub_id, events in matched.items():
        last = await conn.fetchval(_NUMBER, sub_id, len(events))
        if last is None:  # deleted or set off since the cache was read
            continue
        first = last - len(events) + 1
        out += [Notification(sub_id, first + k, e) for k, e in enumerate(events)]
    if out:
        await conn.execute(
            _INSERT,
            [n.subscription_id for n in out],
            [n.event_number for n in out],
            [n.event.event_id for n in out],
            [n.event.seq for n in out],
            [n.event.resource_type for n in out],
            [n.event.id for n in out],
            [n.event.version_id for n in out],
            [n.event.interaction for n in out],
            [n.event.occurred_at for n in out],
        )
    return out


def notification_json(n: Notification) -> dict[str, Any]:
    e = n.event
    return {
        "eventNumber": n.event_number,
        "eventId": e.event_id,
        "resourceType": e.resource_type,
        "id": e.id,
        "versionId": e.version_id,
        "interaction": e.interaction,
        "occurredAt": e.occurred_at.isoformat(),
    }


def notify_payloads(notifications: Iterable[Notification], channels: dict[str, str]) -> list[str]:
    """The `ehr_events` NOTIFY payloads of a batch, each under MAX_NOTIFY_BYTES:
    {"notifications": [{"subscription", "channel", "first", "last", "events"?}]}, one item
    per subscription's run of new eventNumbers; websocket items carry their events (the
    node holding the socket needs no query), split into several items when large."""
    items: list[dict[str, Any]] = []
    by_sub: dict[str, list[Notification]] = {}
    for n in notifications:
        by_sub.setdefault(n.subscription_id, []).append(n)
    for sub_id, runs in by_sub.items():
        channel = channels.get(sub_id, "rest-hook")
        if channel != "websocket":
            items.append(
                {
                    "subscription": sub_id,
                    "channel": channel,
                    "first": runs[0].event_number,
                    "last": runs[-1].event_number,
                }
            )
            continue
        part: list[Notification] = []
        size = 0
        for n in runs:
            event = notification_json(n)
            length = len(orjson.dumps(event)) + 1
            if part and size + length > MAX_NOTIFY_BYTES - 300:
                items.append(_ws_item(sub_id, part))
                part, size = [], 0
            part.append(n)
            size += length
        if part:
            items.append(_ws_item(sub_id, part))
    payloads: list[str] = []
    batch: list[bytes] = []
    size = 0
    for item in items:
        data = orjson.dumps(item)
        if batch and size + len(data) + 1 > MAX_NOTIFY_BYTES - 20:
            payloads.append(_payload(batch))
            batch, size = [], 0
        batch.append(data)
        size += len(data) + 1
    if batch:
        payloads.append(_payload(batch))
    return payloads


def _ws_item(sub_id: str, part: list[Notification]) -> dict[str, Any]:
    return {
        "subscription": sub_id,
        "channel": "websocket",
        "first": part[0].event_number,
        "last": part[-1].event_number,
        "events": [notification_json(n) for n in part],
    }


def _payload(items: list[bytes]) -> str:
    return '{"notifications":[' + ",".join(i.decode() for i in items) + "]}"
