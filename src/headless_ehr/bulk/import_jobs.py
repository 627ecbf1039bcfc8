"""$import jobs in the database (migration 0028): what was asked, by whom, how far each input got.

The kick-off stores a job and one row per input. Inputs are claimed one at a time by any
node (FOR UPDATE SKIP LOCKED on a pending input whose lease has run out, then a fresh
lease token); every unit of lines commits the input's position in the same transaction as
its resources, fenced on that token (record()), so a node that lost its claim can never
commit again, and the node that took over continues after the last committed line.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from . import jobs

LEASE_SECONDS = 15  # a dead node's input is taken over this long after its last renewal
MAX_OPEN_JOBS = 5  # imports one client may have queued or running at once
TABLE = "bulk_import_job"


class LeaseLost(Exception):
    """The job was cancelled, or another node holds the input now."""


@dataclass(frozen=True)
class Job:
    """A bulk_import_job row."""

    id: str
    owner: str
    caller: dict[str, Any]
    request: str
    params: dict[str, Any]
    transaction_time: datetime
    status: str
    error: str | None
    finished_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True)
class Input:
    """A bulk_import_input row: one NDJSON source of one resource type."""

    seq: int
    type: str
    url: str
    status: str  # pending | done | failed
    position: int  # lines committed
    loaded: int
    failed: int
    error: str | None
    kept: int = 0  # line errors kept (at most EHR_BULK_IMPORT_MAX_ERRORS per job; `failed` counts all)


@dataclass(frozen=True)
class Claim:
    """This node's lease on one input of one job."""

    job: Job
    input: Input
    token: str


_JOB = "id, owner, caller::text, request, params::text, transaction_time, status, error, finished_at, expires_at"
_INPUT = "seq, resource_type, url, status, position, loaded, failed, error"


def _job(row: asyncpg.Record) -> Job:
    return Job(
        str(row["id"]),
        row["owner"],
        orjson.loads(row["caller"]),
        row["request"],
        orjson.loads(row["params"]),
        row["transaction_time"],
        row["status"],
        row["error"],
        row["finished_at"],
        row["expires_at"],
    )


def _input(row: asyncpg.Record) -> Input:
    return Input(
        *(row[k] for k in ("seq", "resource_type", "url", "status", "position", "loaded", "failed", "error")),
        kept=row.get("kept", 0),
    )


async def create(
    db: asyncpg.Pool,
    owner: str,
    caller: dict[str, Any],
    request: str,
    params: dict[str, Any],
    inputs: list[tuple[str, str]],
) -> Job | None:
    """A new job with its inputs ((type, url) in order); None when the owner already has
    MAX_OPEN_JOBS accepted or running (checked under a lock of the owner's)."""
    async with db.acquire() as conn, conn.transaction():
        if not await jobs.under_open_limit(conn, "bulk_import_job", "bulk-import", owner, MAX_OPEN_JOBS):
            return None
        row = await conn.fetchrow(
            f"INSERT INTO bulk_import_job (id, owner, caller, request, params, status)"
            f" VALUES ($1, $2, $3::jsonb, $4, $5::jsonb, 'accepted') RETURNING {_JOB}",
            uuid.uuid4(),
            owner,
            orjson.dumps(caller).decode(),
            request,
            orjson.dumps(params).decode(),
        )
        await conn.executemany(
            "INSERT INTO bulk_import_input (job_id, seq, resource_type, url) VALUES ($1, $2, $3, $4)",
            [(row["id"], i, t, u) for i, (t, u) in enumerate(inputs)],
        )
    return _job(row)


async def get(db: asyncpg.Pool, job_id: str) -> Job | None:
    row = await jobs.row_of(db, TABLE, _JOB, job_id)
    return None if row is None else _job(row)


async def inputs_of(db: asyncpg.Pool, job_id: str) -> list[Input]:
    rows = await db.fetch(
        f"SELECT {_INPUT}, (SELECT count(*) FROM bulk_import_error e WHERE e.job_id = i.job_id AND e.seq = i.seq)"
        " AS kept FROM bulk_import_input i WHERE job_id = $1 ORDER BY seq",
        uuid.UUID(job_id),
    )
    return [_input(r) for r in rows]


async def polled(db: asyncpg.Pool, job_id: str, min_seconds: float) -> bool:
    return await jobs.polled(db, TABLE, job_id, min_seconds)


async def cancel(db: asyncpg.Pool, job_id: str) -> None:
    """Cancelled: a node loading one of its inputs stops at its next unit (record() fails);
    what was committed stays (an import is not rolled back); the row goes at once."""
    await db.execute(
        "UPDATE bulk_import_job SET status = 'cancelled', expires_at = now(),"
        " finished_at = coalesce(finished_at, now()) WHERE id = $1",
        uuid.UUID(job_id),
    )


async def claim(db: asyncpg.Pool) -> Claim | None:
    """A pending input of an open job that no live node holds, now leased to the caller."""
    token = uuid.uuid4()
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE bulk_import_input SET lease_token = $1,"
            f" {jobs.leased(2)}"
            f" WHERE (job_id, seq) = (SELECT i.job_id, i.seq FROM bulk_import_input i"
            f" JOIN bulk_import_job j ON j.id = i.job_id"
            f" WHERE i.status = 'pending' AND j.status IN ('accepted', 'running')"
            f" AND {jobs.lease_free('i')}"
            f" ORDER BY j.created_at, i.seq LIMIT 1 FOR UPDATE OF i SKIP LOCKED) RETURNING job_id, {_INPUT}",
            token,
            LEASE_SECONDS,
        )
        if row is None:
            return None
        job = await conn.fetchrow(
            f"UPDATE bulk_import_job SET status = 'running' WHERE id = $1 AND status IN ('accepted', 'running')"
            f" RETURNING {_JOB}",
            row["job_id"],
        )
        if job is None:  # cancelled meanwhile
            return None
    return Claim(_job(job), _input(row), str(token))


_FENCE = (
    " WHERE i.job_id = $1 AND i.seq = $2 AND i.lease_token = $3 AND i.status = 'pending'"
    " AND j.id = i.job_id AND j.status = 'running'"
)


async def record(
    conn: asyncpg.Connection, claim: Claim, position: int, loaded: int, failed: list[tuple[int, str]], max_errors: int
) -> None:
    """Inside a unit's transaction: the input's position after it, its counts and its line
    errors (up to max_errors per job), and a renewed lease; LeaseLost (rolling the unit
    back) when the claim is no longer this node's or the job was cancelled."""
    key = (uuid.UUID(claim.job.id), claim.input.seq, uuid.UUID(claim.token))
    ok = await conn.fetchval(
        "UPDATE bulk_import_input i SET position = greatest(i.position, $4), loaded = i.loaded + $5,"
        f" failed = i.failed + $6, {jobs.leased(7)}"
        f" FROM bulk_import_job j{_FENCE} RETURNING 1",
        *key,
        position,
        loaded,
        len(failed),
        LEASE_SECONDS,
    )
    if ok is None:
        raise LeaseLost
    if failed:
        await conn.execute(
            "INSERT INTO bulk_import_error (job_id, seq, line, message)"
            " SELECT $1, $2, e.line, e.message FROM unnest($3::bigint[], $4::text[]) AS e(line, message)"
            " LIMIT greatest(0, $5 - (SELECT count(*) FROM bulk_import_error WHERE job_id = $1))"
            " ON CONFLICT DO NOTHING",
            key[0],
            key[1],
            [line for line, _ in failed],
            [message[:2000] for _, message in failed],
            max_errors,
        )


async def renew(db: asyncpg.Pool, claim: Claim) -> bool:
    """Renew the lease (while a source is fetched or a unit is slow); False as for record()."""
    ok = await db.fetchval(
        f"UPDATE bulk_import_input i SET {jobs.leased(4)} FROM bulk_import_job j{_FENCE} RETURNING 1",
        uuid.UUID(claim.job.id),
        claim.input.seq,
        uuid.UUID(claim.token),
        LEASE_SECONDS,
    )
    return ok is not None


async def release(db: asyncpg.Pool, claim: Claim) -> None:
    """Let another node (or this one after a restart) take the input over at once."""
    await db.execute(
        "UPDATE bulk_import_input SET lease_until = NULL WHERE job_id = $1 AND seq = $2 AND lease_token = $3",
        uuid.UUID(claim.job.id),
        claim.input.seq,
        uuid.UUID(claim.token),
    )


async def finish_input(db: asyncpg.Pool, claim: Claim, retention_hours: int, error: str | None = None) -> bool:
    """The input is done (error: it could not be read, and is failed); the job is completed
    with its last input. False as for record()."""
    key = uuid.UUID(claim.job.id)
    async with db.acquire() as conn, conn.transaction():
        # the job row's lock orders the inputs finishing at once: the last one sees the others done
        if await conn.fetchval("SELECT status FROM bulk_import_job WHERE id = $1 FOR UPDATE", key) != "running":
            return False
        ok = await conn.fetchval(
            "UPDATE bulk_import_input i SET status = $4, error = $5, lease_token = NULL, lease_until = NULL"
            f" FROM bulk_import_job j{_FENCE} RETURNING 1",
            key,
            claim.input.seq,
            uuid.UUID(claim.token),
            "done" if error is None else "failed",
            None if error is None else error[:2000],
        )
        if ok is None:
            return False
        await conn.execute(
            "UPDATE bulk_import_job SET status = 'completed', finished_at = now(),"
            " expires_at = now() + make_interval(hours => $2) WHERE id = $1"
            " AND NOT EXISTS (SELECT 1 FROM bulk_import_input WHERE job_id = $1 AND status = 'pending')",
            key,
            retention_hours,
        )
    return True


def error_lines(conn: asyncpg.Connection, job_id: str, seq: int, prefetch: int = 500) -> Any:
    """An input's line errors in order (line, message), from a server-side cursor (inside
    a transaction of the caller's)."""
    return conn.cursor(
        "SELECT line, message FROM bulk_import_error WHERE job_id = $1 AND seq = $2 ORDER BY line",
        uuid.UUID(job_id),
        seq,
        prefetch=prefetch,
    )


async def expired(db: asyncpg.Pool, limit: int = 100) -> list[str]:
    return await jobs.expired(db, TABLE, limit)
