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
