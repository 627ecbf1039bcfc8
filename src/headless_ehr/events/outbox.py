"""The outbox in commit order, and the cursors its readers keep (docs/events.md).

Every committed create, update, patch and delete left one outbox row in its own
transaction (store/sql.py, store/bulk.py). A reader (the subscription relay, the broker
publisher) keeps its position in `event_cursor` and reads the rows after it, only below
the write watermark (migration 0009), so a write that commits late is never skipped.
Its turn is claimed by locking its cursor row FOR UPDATE SKIP LOCKED: on several nodes,
one at a time handles the next events and the others skip, so each event is handled
once, in commit order. Position and effects commit together in the claiming transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

NOTIFY_CHANNEL = "ehr_outbox"  # one NOTIFY per statement that added outbox rows (migration 0021)
EVENTS_CHANNEL = "ehr_events"  # the relay's NOTIFY at the commit of new subscription notifications (events/relay.py)

Position = tuple[datetime, int]  # (created_at, seq): the last event a reader handled


@dataclass(frozen=True, slots=True)
class Event:
    """One committed change."""

    event_id: str  # stable: webhook-id, Nats-Msg-Id
    seq: int  # per-deployment sequence number (hand-out order, not commit order)
    resource_type: str
    id: str
    version_id: int
    interaction: str  # create | update | patch | delete
    occurred_at: datetime  # the change's timestamp (meta.lastUpdated)

    @property
    def position(self) -> Position:
        return (self.occurred_at, self.seq)

    @property
    def verb(self) -> str:
        """create, update or delete: a patch is an update (NATS subjects, topic triggers)."""
        return "update" if self.interaction == "patch" else self.interaction


def interaction_of(method: str, version_id: int) -> str:
    """The interaction of an outbox row from its HTTP method and version."""
    if method == "DELETE":
        return "delete"
    if method == "PATCH":
        return "patch"
    return "create" if version_id == 1 else "update"


def event_of(row: asyncpg.Record) -> Event:
    return Event(
        str(row["event_id"]),
        row["seq"],
        row["resource_type"],
        row["id"],
        row["version_id"],
        interaction_of(row["method"], row["version_id"]),
        row["created_at"],
    )


_CLAIM = "SELECT after_at, after_seq FROM event_cursor WHERE name = $1 FOR UPDATE SKIP LOCKED"
_START = (
    "INSERT INTO event_cursor (name, after_at, after_seq) VALUES ($1, write_watermark(), 0)"
    " ON CONFLICT (name) DO NOTHING"
)
_ADVANCE = "UPDATE event_cursor SET after_at = $2, after_seq = $3, updated_at = now() WHERE name = $1"
_SETTLED = """
SELECT event_id, seq, resource_type, id, version_id, method, created_at FROM outbox_settled($1, $2, $3)
"""


async def start_cursor(conn: asyncpg.Connection, name: str) -> None:
    """Create reader `name`'s cursor at the present, unless it exists: a new reader
    starts with the changes committed from now on."""
    await conn.execute(_START, name)


async def claim(conn: asyncpg.Connection, name: str) -> Position | None:
    """Reader `name`'s position, locked for this transaction; None when another node
    holds it (that node is handling the next events) or the cursor does not exist."""
    assert conn.is_in_transaction()
    row = await conn.fetchrow(_CLAIM, name)
    return None if row is None else (row[0], row[1])


async def settled_after(conn: asyncpg.Connection, position: Position, limit: int) -> list[Event]:
    """Up to limit committed events after position, in commit order."""
    rows = await conn.fetch(_SETTLED, position[0], position[1], limit)
    return [event_of(r) for r in rows]


async def advance(conn: asyncpg.Connection, name: str, position: Position) -> None:
    """Move reader `name` past position (in the claiming transaction)."""
    await conn.execute(_ADVANCE, name, position[0], position[1])
