"""A node's WebSocket fan-out: the notifications of the subscriptions its sockets follow.

The relay (events/relay.py) numbers each subscription's events in
`subscription_notification` and NOTIFYs `ehr_events` at commit, heard by every node.
Each node holds one LISTEN connection (db/listen.py) and reads with the events
workers' pool (it never writes a resource row); on a notification, and every POLL_SECONDS in case one was
missed (a lost connection, a reconnect), it reads the new notifications of the
subscriptions bound on this node after the last number each follower was given, in
event_number order, and hands them to the followers. The NOTIFY payload is not read:
the table is the truth, so a chunked, lost or repeated notification changes nothing.

Followers (events/websocket.py) only queue what they are given: a slow socket cannot
hold the others back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import asyncpg

from ..db.listen import Listener
from ..db.periodic import cancel
from .access import STATE_COLUMNS
from .outbox import EVENTS_CHANNEL

log = logging.getLogger("headless_ehr.events")

POLL_SECONDS = 2.0  # a missed NOTIFY is made up for this late at most
BATCH = 500  # notifications read per subscription and round
RETRY_SECONDS = 1.0  # after a failed round

_STATES = f"SELECT {STATE_COLUMNS} FROM subscription_state WHERE id = ANY($1::text[])"
_NOTIFICATIONS = f"""
SELECT n.subscription_id, n.event_number, n.event_id, n.resource_type, n.resource_id, n.version_id,
       n.interaction, n.occurred_at
FROM unnest($1::text[], $2::bigint[]) AS w(id, after)
CROSS JOIN LATERAL (
    SELECT * FROM subscription_notification
    WHERE subscription_id = w.id AND event_number > w.after
    ORDER BY event_number LIMIT {BATCH}
) n
ORDER BY n.subscription_id, n.event_number
"""

Row = Mapping[str, Any]


class Follower(Protocol):
    """One socket's binding to one subscription."""

    subscription_id: str
    after: int  # the last event number it was given
    state: Row  # the subscription's state as last read (status, events_since_start, payload, heartbeat)

    def offer(self, state: Row, notifications: Sequence[Row]) -> None:
        """Queue these notifications (after `after`, in order) and move `after` past them."""

    def gone(self) -> None:
        """The subscription was deleted."""


class Hub:
    """Followers on this node by subscription, fed from the database."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self.pool = pool  # the events workers' (EVENTS_APPLICATION)
        self._followers: dict[str, set[Follower]] = defaultdict(set)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener = Listener(dsn, EVENTS_CHANNEL, lambda _payload: self._wake.set())

    @property
    def connected(self) -> asyncio.Event:
        """Set while the LISTEN connection is up."""
        return self._listener.connected

    @property
    def connection(self) -> asyncpg.Connection | None:
        """That connection (tests end it to see the hub reconnect)."""
        return self._listener.connection

    def start(self) -> None:
        self._listener.start()
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None
        await self._listener.close()

    def add(self, follower: Follower) -> None:
        """Follow from follower.after on (the caller read it from the state just before)."""
        self._followers[follower.subscription_id].add(follower)
        self._wake.set()  # a notification may have passed between that read and now

    def remove(self, follower: Follower) -> None:
        found = self._followers.get(follower.subscription_id)
        if found is not None:
            found.discard(follower)
            if not found:
                del self._followers[follower.subscription_id]

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            self._wake.clear()
            if not self._followers:
                continue
            try:
                await self._forward()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("websocket fan-out: the database failed (%r); trying again", error)
                await asyncio.sleep(RETRY_SECONDS)
            except Exception:  # a bug must not end the node's fan-out: log it, go on
                log.exception("websocket fan-out failed; trying again")
                await asyncio.sleep(RETRY_SECONDS)

    async def _forward(self) -> None:
        """One round: every follower given the notifications after its number (a batch each)."""
        lows = {sid: min(f.after for f in followers) for sid, followers in self._followers.items() if followers}
        states = {r["id"]: r for r in await self.pool.fetch(_STATES, list(lows))}
        for sid in [s for s in lows if s not in states]:
            for follower in list(self._followers.get(sid, ())):
                follower.gone()
                self.remove(follower)
        for sid, state in states.items():
            for follower in self._followers.get(sid, ()):
                follower.state = state  # a status or heartbeat changed shows within a round
        due = [(sid, low) for sid, low in lows.items() if sid in states and states[sid]["events_since_start"] > low]
        if not due:
            return
        rows = await self.pool.fetch(_NOTIFICATIONS, [d[0] for d in due], [d[1] for d in due])
        grouped: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for row in rows:
            grouped[row["subscription_id"]].append(row)
        for sid, notifications in grouped.items():
            if len(notifications) >= BATCH:
                self._wake.set()  # more to read: another round at once
            for follower in list(self._followers.get(sid, ())):
                fresh = [n for n in notifications if n["event_number"] > follower.after]
                if fresh:
                    follower.offer(states[sid], fresh)
