"""The audit log as a hash chain: append in order, verify the whole of it.

Each record's hash is SHA-256(previous record's hash || its seq || its content), so
changing, deleting or inserting a record breaks the chain at that point. Events are
first committed to the queue `audit_pending` (by a write's own statement, or in batches);
the SQL function audit_chain moves them into the chain under one advisory lock, so every
node appends to the same chain and it never forks. `record_hash` is its hash in Python,
for verification.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import asyncpg
import orjson

from .index import Index, index_of

log = logging.getLogger("headless_ehr.audit")
GENESIS = bytes(32)  # the previous hash of the first record


def record_hash(prev_hash: bytes, seq: int, content: bytes) -> bytes:
    return hashlib.sha256(prev_hash + seq.to_bytes(8, "big", signed=True) + content).digest()


class Entry(NamedTuple):
    """One AuditEvent to append: its id, time, JSON bytes and search columns."""

    id: uuid.UUID | str
    recorded: datetime
    content: bytes
    index: Index


_SEP = "\x1f"  # arrays of arrays travel as unit-separated text (unnest flattens text[][])


def index_arrays(entries: Sequence[Entry]) -> list[list[object]]:
    rows = [e.index for e in entries]
    return [
        [_joined(i.patients) for i in rows],
        [_joined(i.agents) for i in rows],
        [_joined(i.entities) for i in rows],
        [i.subtype for i in rows],
        [i.outcome for i in rows],
        [i.action for i in rows],
        [i.address for i in rows],
    ]


def _joined(values: list[str]) -> str:
    return _SEP.join(v.replace(_SEP, "") for v in values)


# The database is away or busy: keep the events and try again. Anything else (an event the
# database refuses, a bug) must not hold every request for ever: the batch is written event
# by event and an event that still fails is logged whole and left out.
RETRYABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)
CHAIN_BATCH = 5000  # pending events chained per statement, at most

# Queued events into audit_pending in one statement (any number of them); with $11
# false its transaction commits without waiting for the disk flush.
INSERT_PENDING = (
    "INSERT INTO audit_pending (id, recorded, content, patients, agents, entities, subtype, outcome, action, address)"
    " SELECT id, recorded, content, string_to_array(p, chr(31)), string_to_array(a, chr(31)),"
    " string_to_array(e, chr(31)), subtype, outcome, action, address"
    " FROM unnest($1::uuid[], $2::timestamptz[], $3::bytea[], $4::text[], $5::text[], $6::text[],"
    " $7::text[], $8::text[], $9::text[], $10::text[])"
    " AS u(id, recorded, content, p, a, e, subtype, outcome, action, address)"
    " WHERE $11::boolean OR set_config('synchronous_commit', 'off', true) IS NOT NULL"
)


def insert_pending_args(entries: Sequence[Entry], sync: bool = True) -> list[object]:
    return [
        [e.id for e in entries],
        [e.recorded for e in entries],
        [e.content for e in entries],
        *index_arrays(entries),
        sync,
    ]


async def queue(conn: asyncpg.Connection, entries: Sequence[Entry], *, sync: bool = True) -> None:
    """Commit events to audit_pending, the queue the chain is built from."""
    if entries:
        await conn.execute(INSERT_PENDING, *insert_pending_args(entries, sync))


async def chain_pending(conn: asyncpg.Connection) -> int:
    """Move every pending event into the chain (the SQL function audit_chain, migration
    0020: one chainer at a time on every node, oldest first); returns how many."""
    moved = 0
    while True:
        taken = await conn.fetchval("SELECT audit_chain($1)", CHAIN_BATCH)
        moved += taken
        if taken < CHAIN_BATCH:
            return moved


VACUUM_EVERY = 20_000  # events a node chains between its vacuums of the queues


async def vacuum_queues(conn: asyncpg.Connection) -> None:
    """Make the chained events' space in the queues reusable: a queue that only grows until
    autovacuum comes (a minute apart) is read whole by every chaining. A vacuum another
    session runs on a queue already is skipped."""
    try:
        await conn.execute("VACUUM (SKIP_LOCKED) audit_pending, audit_read_pending")
    except (asyncpg.PostgresError, *RETRYABLE):  # autovacuum still comes; nothing is lost
        log.warning("audit: could not vacuum the queues", exc_info=True)


async def append(conn: asyncpg.Connection, entries: Sequence[Entry]) -> None:
    """Queue the entries and chain everything pending (tests, tools)."""
    await queue(conn, entries)
    await chain_pending(conn)


@dataclass(frozen=True)
class Break:
    """The first place the chain does not hold: the record it names and what is wrong."""

    seq: int
    id: str
    problem: str

    def __str__(self) -> str:
        return f"audit record seq {self.seq} (AuditEvent/{self.id}): {self.problem}"


@dataclass(frozen=True)
class Verified:
    count: int
    head: bytes  # the last record's hash: compare it with a copy kept elsewhere (e.g. the SIEM)
    broken: Break | None


async def _records(conn: asyncpg.Connection, batch: int = 5000) -> AsyncIterator[asyncpg.Record]:
    after = None
    while True:
        rows = await conn.fetch(
            "SELECT seq, id, content, prev_hash, hash, patients, agents, entities, subtype, outcome, action, address"
            " FROM audit_event WHERE seq > $1 ORDER BY seq LIMIT $2",
            after if after is not None else -(2**63),
            batch,
        )
        for row in rows:
            yield row
        if len(rows) < batch:
            return
        after = rows[-1]["seq"]


async def verify(conn: asyncpg.Connection) -> Verified:
    """Walk the chain from its first record; stop at the first break."""
    count, expected_seq, prev, before_prev = 0, 1, GENESIS, None
    prev_seq, prev_id = 0, ""
    async for row in _records(conn):
        seq, rid, content = row["seq"], str(row["id"]), bytes(row["content"])
        link, stored = bytes(row["prev_hash"]), bytes(row["hash"])
        if link != prev:
            if before_prev is not None and link == before_prev:
                problem = f"it was inserted: the next record (seq {seq}) links past it"
                return Verified(count - 1, before_prev, Break(prev_seq, prev_id, problem))
            if seq != expected_seq:
                problem = f"{_records_named(expected_seq, seq - 1)} deleted before it (its link skips them)"
            elif seq == 1:
                problem = "its link is not the chain's start: records before it were deleted or it was inserted"
            else:
                problem = "its link does not match the previous record: a record was deleted or inserted here"
            return Verified(count, prev, Break(seq, rid, problem))
        if record_hash(link, seq, content) != stored:
            if seq != expected_seq:
                problem = f"its seq was changed, or {_records_named(expected_seq, seq - 1)} deleted"
            else:
                problem = "its content or hash was changed (the hash does not match the content)"
            return Verified(count, prev, Break(seq, rid, problem))
        if _columns(row) != index_of(orjson.loads(content)).row():
            problem = "its search columns or content were changed (they do not match): searches may hide it"
            return Verified(count, prev, Break(seq, rid, problem))
        count += 1
        expected_seq, before_prev, prev = seq + 1, prev, stored
        prev_seq, prev_id = seq, rid
    return Verified(count, prev, None)


def _records_named(first: int, last: int) -> str:
    return f"record {first} was" if first == last else f"records {first}..{last} were"


def _columns(row: asyncpg.Record) -> tuple[object, ...]:
    names = ("patients", "agents", "entities", "subtype", "outcome", "action", "address")
    return tuple(list(row[n]) if isinstance(row[n], list) else row[n] for n in names)
