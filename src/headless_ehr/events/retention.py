"""Removing old events in the background (EHR_EVENT_RETENTION_DAYS, default 7).

Kept for replay until then: outbox rows every reader has passed, notifications, and
the delivery log. A rest-hook subscription's notifications not yet delivered are kept
however old while it is not off (requested, active or in error): setting it back to
`requested` resumes delivery where it stopped, so nothing it matched is dropped under
it. Every delete is a bounded batch, repeated until nothing is left.
"""

from __future__ import annotations

import asyncpg

BATCH = 5000  # rows per DELETE statement

_OUTBOX = """
DELETE FROM outbox WHERE (created_at, seq) IN (
    SELECT created_at, seq FROM outbox
    WHERE created_at < now() - make_interval(days => $1)
        AND created_at < (SELECT coalesce(min(after_at), 'infinity') FROM event_cursor)
    ORDER BY created_at, seq LIMIT $2)
"""
_NOTIFICATIONS = """
DELETE FROM subscription_notification WHERE ctid IN (
    SELECT n.ctid FROM subscription_notification n
    LEFT JOIN subscription_state s ON s.id = n.subscription_id
    WHERE n.occurred_at < now() - make_interval(days => $1)
        AND (s.id IS NULL OR s.channel <> 'rest-hook' OR s.status = 'off' OR n.event_number <= s.delivered_through)
    LIMIT $2)
"""
_DELIVERIES = """
DELETE FROM subscription_delivery WHERE ctid IN (
    SELECT ctid FROM subscription_delivery WHERE at < now() - make_interval(days => $1) LIMIT $2)
"""


async def remove_expired(pool: asyncpg.Pool, days: int, batch: int = BATCH) -> int:
    """Delete what is older than `days` (as above); returns the number of rows removed."""
    removed = 0
    for statement in (_OUTBOX, _NOTIFICATIONS, _DELIVERIES):
        while True:
            async with pool.acquire() as conn:
                status = await conn.execute(statement, days, batch)
            count = int(status.rsplit(" ", 1)[-1])
            removed += count
            if count < batch:
                break
    return removed
