"""The audit log as a hash chain: append in order, verify the whole of it.

Each record's hash is SHA-256(previous record's hash || its seq || its content), so
changing, deleting or inserting a record breaks the chain at that point. A batch is
appended in one statement after the head its node last saw; the primary key on seq
refuses a batch built on a stale head, which is then rebuilt, so every node appends to
the same chain and it never forks.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import asyncpg
import orjson

from .index import Index, index_of

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


PENDING_BATCH = 5000  # write-side events moved into the chain per append, at most

# A batch in one statement: seq, prev_hash and hash computed here from the head this
# node last saw. seq is the primary key, so a node whose head is stale (another node
# appended) fails on the first seq and nothing of the batch is written: it reads the
# head again and retries. The chain never forks and needs no lock. With $14 false the
# statement's transaction commits without waiting for the disk flush.
_INSERT = (
    "INSERT INTO audit_event"
    " (seq, id, recorded, content, prev_hash, hash, patients, agents, entities, subtype, outcome, action, address)"
    " SELECT seq, id, recorded, content, prev_hash, hash, string_to_array(p, chr(31)), string_to_array(a, chr(31)),"
    " string_to_array(e, chr(31)), subtype, outcome, action, address"
    " FROM unnest($1::bigint[], $2::uuid[], $3::timestamptz[], $4::bytea[], $5::bytea[], $6::bytea[],"
    " $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[])"
    " AS u(seq, id, recorded, content, prev_hash, hash, p, a, e, subtype, outcome, action, address)"
    " WHERE $14::boolean OR set_config('synchronous_commit', 'off', true) IS NOT NULL"
)
_HEAD = "SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1"
# Write-side events committed so far, taken out of their queue in the transaction that
# chains them: a crash between the two leaves them pending, never lost or doubled.
_TAKE_PENDING = (
    "DELETE FROM audit_pending WHERE ctid = ANY(ARRAY(SELECT ctid FROM audit_pending LIMIT $1))"
    " RETURNING id, recorded, content, patients, agents, entities, subtype, outcome, action, address"
)
_ATTEMPTS = 20


class Chain:
    """Appends to the chain, remembering its head between batches (one per recorder)."""

    def __init__(self) -> None:
        self._head: tuple[int, bytes] | None = None

    async def append(
        self, conn: asyncpg.Connection, entries: Sequence[Entry], *, pending: bool = False, sync: bool = True
    ) -> int:
        """Append the pending write-side events (when pending), then entries, in order,
        after the chain's last record; returns the last seq."""
        for _ in range(_ATTEMPTS):
            try:
                if pending:
                    async with conn.transaction():
                        taken = await conn.fetch(_TAKE_PENDING, PENDING_BATCH)
                        batch = [*sorted(map(_pending_entry, taken), key=lambda e: e.recorded), *entries]
                        return await self._insert(conn, batch, sync)
                return await self._insert(conn, entries, sync)
            except asyncpg.UniqueViolationError as error:
                if error.constraint_name != "audit_event_pkey":
                    raise
                self._head = None  # another node appended: read the head again
        raise RuntimeError(f"audit: no free place in the chain after {_ATTEMPTS} attempts")

    async def _insert(self, conn: asyncpg.Connection, entries: Sequence[Entry], sync: bool) -> int:
        if self._head is None:
            row = await conn.fetchrow(_HEAD)
            self._head = (row["seq"], bytes(row["hash"])) if row else (0, GENESIS)
        seq, prev = self._head
        if not entries:
            return seq
        seqs, prevs, hashes = [], [], []
        for entry in entries:
            seq += 1
            digest = record_hash(prev, seq, entry.content)
            seqs.append(seq)
            prevs.append(prev)
            hashes.append(digest)
            prev = digest
        args = [[e.id for e in entries], [e.recorded for e in entries], [e.content for e in entries]]
        try:
            await conn.execute(_INSERT, seqs, args[0], args[1], args[2], prevs, hashes, *index_arrays(entries), sync)
        except BaseException:
            self._head = None  # whether it was written is unknown: read it again
            raise
        self._head = (seq, prev)
        return seq


def _pending_entry(row: asyncpg.Record) -> Entry:
    index = Index(
        list(row["patients"]),
        list(row["agents"]),
        list(row["entities"]),
        row["subtype"],
        row["outcome"],
        row["action"],
        row["address"],
    )
    return Entry(row["id"], row["recorded"], bytes(row["content"]), index)


async def append(conn: asyncpg.Connection, entries: Sequence[Entry], *, pending: bool = False) -> int:
    """Append once, from the head as it is now (tests, tools)."""
    return await Chain().append(conn, entries, pending=pending)


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
