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
import logging
import shutil

import asyncpg

from ..config import Settings
from ..store.repository import ResourceStore
from . import import_jobs
from .caller import caller_of
from .export_s3 import S3Bucket
from .import_jobs import Claim, LeaseLost
from .import_sources import SourceError, fetch, spool_dir
from .importer import Failed, Importer, InputUnreadable
from .job_worker import TRANSIENT, JobWorker

log = logging.getLogger("headless_ehr.bulk")

BATCH_LINES = 500  # lines per unit (one transaction), as `ehr import`'s default --batch-size


class _InputLedger:
    """Commits a unit's progress on the claimed input (importer.Ledger)."""

    def __init__(self, claim: Claim, max_errors: int) -> None:
        self.claim = claim
        self.max_errors = max_errors

    async def record(self, conn: asyncpg.Connection, position: int, loaded: int, failed: list[Failed]) -> None:
        await import_jobs.record(conn, self.claim, position, loaded, failed, self.max_errors)


class ImportWorker(JobWorker[Claim]):
    """This node's runner: claims pending inputs of any node's jobs, and sweeps expired jobs."""

    what = "bulk import worker"
    lease_seconds = import_jobs.LEASE_SECONDS

    def __init__(
        self,
        pool: asyncpg.Pool,
        write_pool: asyncpg.Pool,
        store: ResourceStore,
        settings: Settings,
        bucket: S3Bucket | None = None,
    ) -> None:
        super().__init__(pool, log)  # job rows
        self.write_pool = write_pool  # the resources' units (their own connections: they are long)
        self.store = store
        self.settings = settings
        self.bucket = bucket
        self.concurrency = settings.bulk_import_concurrency
        self._finishing: set[str] = set()  # claim tokens of inputs past loading: a lost lease stops nothing then

    async def claim(self) -> Claim | None:
        return await import_jobs.claim(self.pool)

    async def renew(self, claim: Claim) -> bool:
        return await import_jobs.renew(self.pool, claim)

    async def release(self, claim: Claim) -> None:
        await import_jobs.release(self.pool, claim)

    def stops_when_lost(self, claim: Claim) -> bool:
        """Stop the run when the job was cancelled or the input taken over (e.g. mid-download)."""
        if claim.token in self._finishing:
            return False
        log.info("bulk import %s: input %d stopped (cancelled or taken over)", claim.job.id, claim.input.seq)
        return True

    async def sweep(self) -> None:
        """Remove the jobs past their expiry and whatever of them is still spooled here."""
        for job_id in await import_jobs.expired(self.pool):
            shutil.rmtree(spool_dir(self.settings.data_dir, job_id), ignore_errors=True)

    async def run(self, claim: Claim) -> None:
        try:
            await self._load(claim)
        finally:
            self._finishing.discard(claim.token)

    async def _load(self, claim: Claim) -> None:
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
            self._finishing.add(claim.token)
            if await import_jobs.finish_input(self.pool, claim, hours):
                log.info("bulk import %s: input %d loaded", claim.job.id, claim.input.seq)
        except (SourceError, InputUnreadable) as exc:  # the input as a whole: reported, the job goes on
            self._finishing.add(claim.token)
            await import_jobs.finish_input(self.pool, claim, hours, error=str(exc))
        except LeaseLost:
            log.info("bulk import %s: input %d is no longer this node's", claim.job.id, claim.input.seq)
        except (*TRANSIENT, asyncio.CancelledError):
            raise  # the lease runs out; this node or another takes the input over
        except Exception as exc:
            log.exception("bulk import %s: input %d failed", claim.job.id, claim.input.seq)
            self._finishing.add(claim.token)
            await import_jobs.finish_input(self.pool, claim, hours, error=f"the input could not be loaded: {exc}")
        finally:
            if spooled is not None:
                spooled.unlink(missing_ok=True)
