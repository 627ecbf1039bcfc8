"""What every background job table shares (bulk_export_job, async_request, bulk_import_job): status
requests rate-limited per job, and removal after expiry. The table name is always one
of this module's callers' constants, never input."""

from __future__ import annotations

import uuid

import asyncpg

JOB_TABLES = frozenset({"bulk_export_job", "async_request", "bulk_import_job"})


def _table(name: str) -> str:
    assert name in JOB_TABLES, name
    return name


async def polled(db: asyncpg.Pool, table: str, job_id: str, min_seconds: float) -> bool:
    """Record a status request; False when the last one answered was under min_seconds ago."""
    row = await db.fetchval(
        f"UPDATE {_table(table)} SET polled_at = clock_timestamp() WHERE id = $1"
        " AND (polled_at IS NULL OR polled_at <= clock_timestamp() - make_interval(secs => $2)) RETURNING 1",
        uuid.UUID(job_id),
        min_seconds,
    )
    return row is not None


async def expired(db: asyncpg.Pool, table: str, limit: int = 100) -> list[str]:
    """Remove up to limit jobs past their expiry; their ids (whose files the caller removes)."""
    name = _table(table)
    rows = await db.fetch(
        f"DELETE FROM {name} WHERE id IN (SELECT id FROM {name} WHERE expires_at < now()"
        " LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id",
        limit,
    )
    return [str(r[0]) for r in rows]


def leased(param: int) -> str:
    """The SET clause that (re)leases a claim for the seconds in placeholder $param."""
    return f"lease_until = clock_timestamp() + make_interval(secs => ${param})"


def lease_free(alias: str = "") -> str:
    """The condition of a row no live node holds (never leased, or its lease ran out)."""
    column = f"{alias}.lease_until" if alias else "lease_until"
    return f"({column} IS NULL OR {column} < clock_timestamp())"


async def under_open_limit(conn: asyncpg.Connection, table: str, lock: str, owner: str, max_open: int) -> bool:
    """Whether the owner has fewer than max_open accepted or running jobs in the table. Taken under
    a transaction lock of the owner's (lock names the kind), so parallel kick-offs cannot pass it together."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))", lock, owner)
    open_jobs = await conn.fetchval(
        f"SELECT count(*) FROM {_table(table)} WHERE owner = $1 AND status IN ('accepted', 'running')", owner
    )
    return open_jobs < max_open


async def renew(db: asyncpg.Pool, table: str, job_id: str, token: str, seconds: float) -> bool:
    """Renew a running job's lease; False when it is no longer this claim's (cancelled, finished, taken over)."""
    done = await db.fetchval(
        f"UPDATE {_table(table)} SET {leased(3)} WHERE id = $1 AND lease_token = $2 AND status = 'running' RETURNING 1",
        uuid.UUID(job_id),
        uuid.UUID(token),
        seconds,
    )
    return done is not None


async def row_of(db: asyncpg.Pool, table: str, columns: str, job_id: str) -> asyncpg.Record | None:
    """The job's row (the caller's columns); None for an unknown id or one that is no UUID at all."""
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        return None
    return await db.fetchrow(f"SELECT {columns} FROM {_table(table)} WHERE id = $1", key)
