"""The background runner of $import inputs: any node, up to EHR_BULK_IMPORT_CONCURRENCY at once.

An input is claimed (bulk/import_jobs.py), fetched to the node's disk when remote
(bulk/import_sources.py), and loaded by `ehr import`'s own NDJSON path (bulk/importer.py):
the same validation, indexing and batched writes, with the caller's rights as frozen at
kick-off (bulk/caller.py). Each unit of lines commits the input's position and line errors
with its resources, fenced on the claim, so a restart or a takeover continues after the
last committed line and never writes a resource version twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time

import asyncpg

from ..config import Settings
from ..db.periodic import cancel
from ..store.repository import ResourceStore
from . import import_jobs
from .caller import caller_of
from .export_s3 import S3Bucket
from .export_worker import POLL_SECONDS, SWEEP_SECONDS, TRANSIENT
from .import_jobs import Claim, LeaseLost
from .import_sources import SourceError, fetch, spool_dir
from .importer import Failed, Importer, InputUnreadable

log = logging.getLogger("headless_ehr.bulk")

BATCH_LINES = 500  # lines per unit (one transaction), as `ehr import`'s default --batch-size


class _InputLedger:
    """Commits a unit's progress on the claimed input (importer.Ledger)."""

    def __init__(self, claim: Claim, max_errors: int) -> None:
        self.claim = claim
        self.max_errors = max_errors

    async def record(self, conn: asyncpg.Connection, position: int, loaded: int, failed: list[Failed]) -> None:
        await import_jobs.record(conn, self.claim, position, loaded, failed, self.max_errors)


class ImportWorker:
    """This node's runner: claims pending inputs of any node's jobs, and sweeps expired jobs."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        write_pool: asyncpg.Pool,
        store: ResourceStore,
        settings: Settings,
        bucket: S3Bucket | None = None,
    ) -> None:
        self.pool = pool  # job rows
        self.write_pool = write_pool  # the resources' units (their own connections: they are long)
        self.store = store
        self.settings = settings
        self.bucket = bucket
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: dict[asyncio.Task[None], Claim] = {}
        self._swept = -SWEEP_SECONDS

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        """A job was just accepted on this node: look now."""
        self._wake.set()

    async def close(self) -> None:
        await cancel(self._task)
        claims = list(self._running.values())
        await asyncio.gather(*(cancel(task) for task in list(self._running)))
        for claim in claims:  # shut down mid-input: the next node need not wait for the lease
            with contextlib.suppress(*TRANSIENT, asyncpg.PostgresError, OSError):
                await import_jobs.release(self.pool, claim)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                if time.monotonic() - self._swept >= SWEEP_SECONDS:
                    self._swept = time.monotonic()
                    await self.sweep()
                if len(self._running) < self.settings.bulk_import_concurrency:
                    claim = await import_jobs.claim(self.pool)
                    if claim is not None:
                        task = asyncio.create_task(self._run(claim))
                        self._running[task] = claim
                        task.add_done_callback(self._done)
                        continue
            except (*TRANSIENT, asyncpg.PostgresError, OSError):
                log.warning("bulk import worker: the database is unavailable; trying again", exc_info=True)
            except Exception:  # never let one bad job stop this node's imports for good
                log.exception("bulk import worker: unexpected failure; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        if not task.cancelled() and task.exception() is not None:  # a lost connection: the lease runs out
            log.warning("bulk import worker: an input stopped; it is taken over", exc_info=task.exception())
        self._wake.set()  # a slot is free

    async def sweep(self) -> None:
        """Remove the jobs past their expiry and whatever of them is still spooled here."""
        for job_id in await import_jobs.expired(self.pool):
            shutil.rmtree(spool_dir(self.settings.data_dir, job_id), ignore_errors=True)

    async def _run(self, claim: Claim) -> None:
        run = asyncio.current_task()
        assert run is not None
        loading = asyncio.Event()  # cleared once the input is finishing: the heartbeat stops nothing then
        loading.set()
        heartbeat = asyncio.create_task(self._heartbeat(claim, run, loading))
        spooled = None
        hours = self.settings.bulk_retention_hours
        try:
            path, copied = await fetch(
                claim.input.url,
                spool_dir(self.settings.data_dir, claim.job.id) / f"{claim.input.seq}-{claim.token[:8]}",
                data_dir=self.settings.data_dir,
                bucket=self.bucket,
                max_bytes=self.settings.bulk_import_max_bytes,
                seconds=self.settings.bulk_import_fetch_seconds,
            )
            spooled = path if copied else None
            importer = Importer(
                self.write_pool,
                self.store,
                caller_of(claim.job.caller),
                batch_size=BATCH_LINES,
                concurrency=1,
                max_bundle_bytes=self.settings.import_max_bundle_bytes,
            )
            ledger = _InputLedger(claim, self.settings.bulk_import_max_errors)
            await importer.load_ndjson(path, claim.input.position, ledger, claim.input.type)
            loading.clear()
            if await import_jobs.finish_input(self.pool, claim, hours):
                log.info("bulk import %s: input %d loaded", claim.job.id, claim.input.seq)
        except (SourceError, InputUnreadable) as exc:  # the input as a whole: reported, the job goes on
            loading.clear()
            await import_jobs.finish_input(self.pool, claim, hours, error=str(exc))
        except LeaseLost:
            log.info("bulk import %s: input %d is no longer this node's", claim.job.id, claim.input.seq)
        except (*TRANSIENT, asyncio.CancelledError):
            raise  # the lease runs out; this node or another takes the input over
        except Exception as exc:
            log.exception("bulk import %s: input %d failed", claim.job.id, claim.input.seq)
            loading.clear()
            await import_jobs.finish_input(self.pool, claim, hours, error=f"the input could not be loaded: {exc}")
        finally:
            await cancel(heartbeat)
            if spooled is not None:
                spooled.unlink(missing_ok=True)

    async def _heartbeat(self, claim: Claim, run: asyncio.Task[None], loading: asyncio.Event) -> None:
        """Renew the lease while the source is fetched and a unit loads (units renew it too);
        stop the run when the job was cancelled or the input taken over (e.g. mid-download)."""
        while True:
            await asyncio.sleep(import_jobs.LEASE_SECONDS / 3)
            with contextlib.suppress(*TRANSIENT, asyncpg.PostgresError, OSError):
                if not await import_jobs.renew(self.pool, claim) and loading.is_set():
                    log.info(
                        "bulk import %s: input %d stopped (cancelled or taken over)", claim.job.id, claim.input.seq
                    )
                    run.cancel()
                    return
