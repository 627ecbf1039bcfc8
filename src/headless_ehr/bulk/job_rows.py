"""What $export and $import jobs share in their rows: the status-poll throttle and expiry.

Both tables have `id`, `polled_at` and `expires_at` (migrations 0027 and 0028); the table
name is one of ours, never the client's.
"""

from __future__ import annotations

import uuid

import asyncpg

TABLES = frozenset({"bulk_export_job", "bulk_import_job"})


async def polled(db: asyncpg.Pool, table: str, job_id: str, min_seconds: float) -> bool:
    """Record a status request; False when the last one answered was under min_seconds ago."""
    assert table in TABLES
    row = await db.fetchval(
        f"UPDATE {table} SET polled_at = clock_timestamp() WHERE id = $1"
        " AND (polled_at IS NULL OR polled_at <= clock_timestamp() - make_interval(secs => $2)) RETURNING 1",
        uuid.UUID(job_id),
        min_seconds,
    )
    return row is not None


async def expired(db: asyncpg.Pool, table: str, limit: int = 100) -> list[str]:
    """Remove up to limit jobs past their expiry; their ids (whose files the caller removes)."""
    assert table in TABLES
    rows = await db.fetch(
        f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE expires_at < now()"
        " LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id",
        limit,
    )
    return [str(r[0]) for r in rows]
