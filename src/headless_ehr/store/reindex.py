"""$reindex: rewrite search index rows, so new SearchParameters become searchable.

A job registers every stored SearchParameter in `custom_search_param`, lets every
node pick the registration up (they poll it), re-extracts the index rows of every
resource in scope in keyset-ordered batches, then marks the parameters indexed,
which makes them usable in queries. Progress lives in the `job` table; a job whose
node died is resumed from its last batch by the next node that starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import asyncpg
import orjson

from ..db.periodic import cancel
from ..fhir import json as fhir_json
from ..search.custom import is_registered
from ..search.extract import extract
from ..search.registry import CUSTOM
from . import sql
from .repository import index_args

log = logging.getLogger("headless_ehr.reindex")

REGISTRY_POLL_SECONDS = 2.0
BATCH = 200
STALE_JOB_SECONDS = 60


async def load_registry(db: asyncpg.Pool | asyncpg.Connection) -> None:
    """Install the registered custom SearchParameters in this process if they changed."""
    stamp = tuple(await db.fetchrow("SELECT count(*), max(updated_at) FROM custom_search_param"))
    if stamp == CUSTOM.stamp:
        return
    rows = await db.fetch("SELECT definition, indexed_at IS NOT NULL FROM custom_search_param")
    CUSTOM.replace([(orjson.loads(r[0]), r[1]) for r in rows], stamp)


async def poll_registry(pool: asyncpg.Pool) -> None:
    """Background task: keep this node's registry in step with the database."""
    while True:
        try:
            await load_registry(pool)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("cannot refresh search parameter registry: %s", exc)
        await asyncio.sleep(REGISTRY_POLL_SECONDS)


async def reindex_resource(
    db: asyncpg.Pool | asyncpg.Connection, resource_type: str, rid: str, local_base: str | None = None
) -> bool:
    """Re-extract one resource's index rows (absolute references under local_base are
    local, as on write); False when it is missing or deleted."""
    row = await db.fetchrow(sql.READ_CURRENT, resource_type, rid)
    if row is None or row[2] is None:
        return False
    mask, index = index_args(extract(fhir_json.loads(row[2]), local_base=local_base))
    args = [resource_type, rid, row[0], row[1], row[2], "REINDEX", *index]
    return bool(await db.fetchval(sql.write_statement("reindex", mask), *args))


async def _register_search_parameters(conn: asyncpg.Connection) -> list[str]:
    """Sync custom_search_param with the stored SearchParameters; returns their base types."""
    stored = await conn.fetch(
        "SELECT id, version_id, content FROM resource WHERE resource_type = 'SearchParameter' AND NOT deleted"
    )
    bases: set[str] = set()
    urls = []
    for rid, version, content in stored:
        resource = fhir_json.loads(content)
        if not is_registered(resource):
            continue
        url = resource.get("url") or f"urn:ehr:searchparameter:{rid}"
        urls.append(url)
        bases.update(resource.get("base", ()))
        await conn.execute(
            "INSERT INTO custom_search_param (url, resource_id, version_id, definition)"
            " VALUES ($1, $2, $3, $4::jsonb)"
            " ON CONFLICT (url) DO UPDATE SET resource_id = EXCLUDED.resource_id,"
            " version_id = EXCLUDED.version_id, definition = EXCLUDED.definition,"
            " indexed_at = NULL, updated_at = now()"
            " WHERE custom_search_param.version_id <> EXCLUDED.version_id"
            " OR custom_search_param.resource_id <> EXCLUDED.resource_id",
            url,
            rid,
            version,
            fhir_json.dumps(resource).decode(),
        )
    await conn.execute("DELETE FROM custom_search_param WHERE NOT (url = ANY($1::text[]))", urls)
    return sorted(bases)


class Reindexer:
    """Starts, runs and reports $reindex jobs."""

    def __init__(self, pool: asyncpg.Pool, all_types: list[str]):
        self.pool = pool
        self.all_types = all_types
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, types: list[str] | None, local_base: str | None = None) -> str:
        """Queue a job over types (None: every type) and run it in the background;
        local_base is kept with the job, so a node resuming it extracts the same rows."""
        job_id = str(uuid.uuid4())
        params = {"types": types, "base": local_base}
        await self.pool.execute(
            "INSERT INTO job (id, kind, status, params) VALUES ($1, 'reindex', 'running', $2::jsonb)",
            job_id,
            orjson.dumps(params).decode(),
        )
        self._spawn(job_id)
        return job_id

    def _spawn(self, job_id: str) -> None:
        task = asyncio.create_task(self._run(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume_stale(self, local_base: str | None = None) -> None:
        """Pick up jobs whose node stopped updating them (it died mid-run), and those a
        migration queued (params.upgrade), which take this node's public base."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE job SET params = params - 'upgrade' || jsonb_build_object('base', $1::text)"
                " WHERE kind = 'reindex' AND status = 'running' AND params ? 'upgrade'",
                local_base,
            )
            rows = await conn.fetch(
                "SELECT id FROM job WHERE kind = 'reindex' AND status = 'running'"
                " AND updated_at < now() - make_interval(secs => $1) FOR UPDATE SKIP LOCKED",
                STALE_JOB_SECONDS,
            )
            for r in rows:
                await conn.execute("UPDATE job SET updated_at = now() WHERE id = $1", r[0])
        for r in rows:
            self._spawn(r[0])

    async def status(self, job_id: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            "SELECT status, params, progress, error, created_at, updated_at FROM job"
            " WHERE id = $1 AND kind = 'reindex'",
            job_id,
        )
        if row is None:
            return None
        return {
            "status": row[0],
            "params": orjson.loads(row[1]),
            "progress": orjson.loads(row[2]),
            "error": row[3],
            "created": row[4],
            "updated": row[5],
        }

    async def _save(
        self,
        job_id: str,
        progress: dict[str, Any],
        status: str = "running",
        error: str | None = None,
    ) -> None:
        await self.pool.execute(
            "UPDATE job SET progress = $2::jsonb, status = $3, error = $4, updated_at = now() WHERE id = $1",
            job_id,
            orjson.dumps(progress).decode(),
            status,
            error,
        )

    async def _run(self, job_id: str) -> None:
        job = await self.status(job_id)
        assert job is not None
        progress: dict[str, Any] = job["progress"] or {}
        try:
            async with self.pool.acquire() as conn:
                custom_bases = await _register_search_parameters(conn)
            await load_registry(self.pool)
            if not progress.get("registered"):
                # let every node load the new parameters before rows are rewritten
                await asyncio.sleep(REGISTRY_POLL_SECONDS * 1.5)
                progress["registered"] = True
            types = job["params"].get("types") or self.all_types
            progress.setdefault(
                "total",
                await self.pool.fetchval(
                    "SELECT count(*) FROM resource WHERE resource_type = ANY($1::text[]) AND NOT deleted",
                    types,
                ),
            )
            progress.setdefault("processed", 0)
            done_types: list[str] = progress.setdefault("done", [])
            for rtype in types:
                if rtype in done_types:
                    continue
                after = progress.get("after", {}).get(rtype, "")
                while True:
                    ids = await self.pool.fetch(
                        "SELECT id FROM resource WHERE resource_type = $1 AND NOT deleted AND id > $2"
                        " ORDER BY id LIMIT $3",
                        rtype,
                        after,
                        BATCH,
                    )
                    if not ids:
                        break
                    async with self.pool.acquire() as conn:
                        for (rid,) in ids:
                            await reindex_resource(conn, rtype, rid, job["params"].get("base"))
                    after = ids[-1][0]
                    progress.setdefault("after", {})[rtype] = after
                    progress["processed"] += len(ids)
                    await self._save(job_id, progress)
                done_types.append(rtype)
            covered = set(types)
            await self.pool.execute(
                "UPDATE custom_search_param SET indexed_at = now(), updated_at = now()"
                " WHERE indexed_at IS NULL AND NOT EXISTS ("
                "  SELECT 1 FROM jsonb_array_elements_text(definition->'base') b WHERE NOT (b = ANY($1::text[])))",
                sorted(covered),
            )
            await load_registry(self.pool)
            progress["customBases"] = custom_bases
            await self._save(job_id, progress, "completed")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # recorded for the client; the job can be started again
            log.exception("reindex job %s failed", job_id)
            with contextlib.suppress(Exception):
                await self._save(job_id, progress, "failed", str(exc))

    async def close(self) -> None:
        await asyncio.gather(*(cancel(task) for task in list(self._tasks)))
