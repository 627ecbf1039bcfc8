"""$export jobs in the database (migration 0027): what was asked, by whom, how far it got.

A job is created by the kick-off with its snapshot instant (transactionTime: the write
watermark, migration 0009) and is run by whichever node claims it: FOR UPDATE SKIP
LOCKED on an open job whose lease has run out, then a fresh lease token. Every progress
commit and lease renewal is fenced on that token, so a node that lost its lease (it
stalled, another node took over) can never record progress again.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from . import jobs

LEASE_SECONDS = 15  # a dead node's job is taken over this long after its last renewal
MAX_OPEN_JOBS = 5  # exports one client (user, patient context) may have queued or running at once


@dataclass(frozen=True)
class ExportSpec:
    """What a kick-off asked for, checked (rest/operations/export.py)."""

    level: str  # system | patient | group
    types: list[str]  # the types to export, in order
    since: str | None = None  # ISO instant: versions at or after it only
    type_filters: dict[str, list[str]] = field(default_factory=dict)  # type -> queries (ORed)
    elements: dict[str, list[str]] = field(default_factory=dict)  # type ("*": every type) -> elements
    patients: list[str] | None = None  # the Patients whose compartments are exported (None: any)
    group: str | None = None  # Group/[id]/$export: its id
    provenance: bool = False  # includeAssociatedData=LatestProvenanceResources

    def json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, data: dict[str, Any]) -> ExportSpec:
        return cls(**data)


@dataclass
class Job:
    """A bulk_export_job row; lease_token is this node's claim when it runs the job."""

    id: str
    owner: str
    caller: dict[str, Any]
    request: str
    local_base: str | None
    spec: ExportSpec
    transaction_time: datetime
    status: str
    progress: dict[str, Any]
    error: str | None
    lease_token: str | None
    finished_at: datetime | None
    expires_at: datetime | None
    polled_at: datetime | None


def _job(row: asyncpg.Record) -> Job:
    return Job(
        str(row["id"]),
        row["owner"],
        orjson.loads(row["caller"]),
        row["request"],
        row["local_base"],
        ExportSpec.of(orjson.loads(row["params"])),
        row["transaction_time"],
        row["status"],
        orjson.loads(row["progress"]),
        row["error"],
        None if row["lease_token"] is None else str(row["lease_token"]),
        row["finished_at"],
        row["expires_at"],
        row["polled_at"],
    )


_COLUMNS = (
    "id, owner, caller::text, request, local_base, params::text, transaction_time, status, progress::text,"
    " error, lease_token, finished_at, expires_at, polled_at"
)


async def create(
    db: asyncpg.Pool, owner: str, caller: dict[str, Any], request: str, local_base: str | None, spec: ExportSpec
) -> Job | None:
    """A new job, its snapshot instant taken now: every version below it is committed.
    None when the owner already has MAX_OPEN_JOBS accepted or running (checked under a
    lock of the owner's, so parallel kick-offs cannot pass it together)."""
    async with db.acquire() as conn, conn.transaction():
        if not await jobs.under_open_limit(conn, "bulk_export_job", "bulk-export", owner, MAX_OPEN_JOBS):
            return None
        row = await conn.fetchrow(
            f"INSERT INTO bulk_export_job (id, owner, caller, request, local_base, params, transaction_time, status)"
            f" VALUES ($1, $2, $3::jsonb, $4, $5, $6::jsonb, write_watermark(), 'accepted') RETURNING {_COLUMNS}",
            uuid.uuid4(),
            owner,
            orjson.dumps(caller).decode(),
            request,
            local_base,
            orjson.dumps(spec.json()).decode(),
        )
    return _job(row)


async def get(db: asyncpg.Pool, job_id: str) -> Job | None:
    row = await jobs.row_of(db, "bulk_export_job", _COLUMNS, job_id)
    return None if row is None else _job(row)


async def polled(db: asyncpg.Pool, job_id: str, min_seconds: float) -> bool:
    """Record a status request; False when the last one answered was under min_seconds ago."""
    return await jobs.polled(db, "bulk_export_job", job_id, min_seconds)


async def cancel(db: asyncpg.Pool, job_id: str) -> None:
    """Cancelled: its worker stops at its next page; the files go now (the caller) and the row at expiry."""
    await db.execute(
        "UPDATE bulk_export_job SET status = 'cancelled', lease_token = NULL, expires_at = now(),"
        " finished_at = coalesce(finished_at, now()) WHERE id = $1",
        uuid.UUID(job_id),
    )


async def claim(db: asyncpg.Pool) -> Job | None:
    """An open job no live node holds, now leased to the caller (a new lease token)."""
    row = await db.fetchrow(
        f"UPDATE bulk_export_job SET status = 'running', lease_token = $1,"
        f" {jobs.leased(2)}"
        f" WHERE id = (SELECT id FROM bulk_export_job WHERE status IN ('accepted', 'running')"
        f" AND {jobs.lease_free()}"
        f" ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}",
        uuid.uuid4(),
        LEASE_SECONDS,
    )
    return None if row is None else _job(row)


async def record(db: asyncpg.Pool, job: Job, progress: dict[str, Any], files: list[dict[str, Any]]) -> bool:
    """Commit progress and the files completed since the last commit, and renew the
    lease; False when the job is no longer this claim's (cancelled, or taken over by
    another node): nothing is recorded and the caller stops."""
    return await _committed(db, job, progress, files, done=False)


async def _committed(
    db: asyncpg.Pool, job: Job, progress: dict[str, Any], files: list[dict[str, Any]], *, done: bool, hours: int = 0
) -> bool:
    assert job.lease_token is not None
    key, token = uuid.UUID(job.id), uuid.UUID(job.lease_token)
    async with db.acquire() as conn, conn.transaction():
        if done:
            ok = await conn.fetchval(
                "UPDATE bulk_export_job SET status = 'completed', progress = $3::jsonb, lease_token = NULL,"
                " lease_until = NULL, finished_at = now(), expires_at = now() + make_interval(hours => $4)"
                " WHERE id = $1 AND lease_token = $2 AND status = 'running' RETURNING 1",
                key,
                token,
                orjson.dumps(progress).decode(),
                hours,
            )
        else:
            ok = await conn.fetchval(
                f"UPDATE bulk_export_job SET progress = $3::jsonb, {jobs.leased(4)}"
                " WHERE id = $1 AND lease_token = $2 AND status = 'running' RETURNING 1",
                key,
                token,
                orjson.dumps(progress).decode(),
                LEASE_SECONDS,
            )
        if ok is None:
            return False
        if files:
            await conn.executemany(
                "INSERT INTO bulk_export_file (job_id, seq, kind, resource_type, name, count, bytes)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                [(key, f["seq"], f["kind"], f["type"], f["name"], f["count"], f["bytes"]) for f in files],
            )
    return True


async def files_of(db: asyncpg.Pool, job_id: str) -> list[dict[str, Any]]:
    """A job's complete files, in order: kind, type, name, count, bytes."""
    rows = await db.fetch(
        "SELECT kind, resource_type, name, count, bytes FROM bulk_export_file WHERE job_id = $1 ORDER BY seq",
        uuid.UUID(job_id),
    )
    return [{"kind": r[0], "type": r[1], "name": r[2], "count": r[3], "bytes": r[4]} for r in rows]


async def renew(db: asyncpg.Pool, job: Job) -> bool:
    """Renew the lease (while a long page is read); False as for record()."""
    assert job.lease_token is not None
    return await jobs.renew(db, "bulk_export_job", job.id, job.lease_token, LEASE_SECONDS)


async def finish(
    db: asyncpg.Pool, job: Job, progress: dict[str, Any], files: list[dict[str, Any]], retention_hours: int
) -> bool:
    """Completed (with its last files): it expires after retention_hours."""
    return await _committed(db, job, progress, files, done=True, hours=retention_hours)


async def fail(db: asyncpg.Pool, job: Job, error: str, retention_hours: int) -> None:
    """Failed for good (the status request answers 500 with error)."""
    await db.execute(
        "UPDATE bulk_export_job SET status = 'failed', error = $3, lease_token = NULL, lease_until = NULL,"
        " finished_at = now(), expires_at = now() + make_interval(hours => $4)"
        " WHERE id = $1 AND lease_token = $2 AND status = 'running'",
        uuid.UUID(job.id),
        uuid.UUID(job.lease_token or str(uuid.UUID(int=0))),
        error[:2000],
        retention_hours,
    )


async def release(db: asyncpg.Pool, job: Job) -> None:
    """Let another node (or this one after a restart) take the job over at once."""
    if job.lease_token is not None:
        await db.execute(
            "UPDATE bulk_export_job SET lease_until = NULL WHERE id = $1 AND lease_token = $2",
            uuid.UUID(job.id),
            uuid.UUID(job.lease_token),
        )


async def expired(db: asyncpg.Pool, limit: int = 100) -> list[str]:
    """Remove up to limit jobs past their expiry; their ids (whose files the caller removes)."""
    return await jobs.expired(db, "bulk_export_job", limit)
