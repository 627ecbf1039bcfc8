"""The background runner of $export jobs: one job at a time per node, any node.

A job is a list of streams (each exported type's resources, then, for _since exports,
each type's deletions). A stream is read in keyset pages of id order (at most
EHR_BULK_PAGE_ROWS resources or PAGE_BYTES, each from a server-side cursor), so no
more than a page is ever in memory; its lines are appended to the current file part,
which is cut when the next line would take it past EHR_BULK_FILE_BYTES. After every
page the file is flushed and the job's progress committed (fenced by the lease):
stream, last id written, current part (its file) and its length in bytes and lines.
Each claim writes files of its own (their names end with the claim's token): a node
that resumes a job starts its own file of the current part with the committed bytes of
the previous claim's file and continues after the committed id, so a crash at any point
neither repeats nor loses a line, and a stalled node that has not yet noticed it lost
the job can only append to files no manifest will name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg

from ..auth.policies import hidden_elements, masked
from ..auth.principal import Principal
from ..config import Settings
from ..fhir import json as fhir_json
from ..fhir.summary import subset
from . import export_files, export_jobs
from .caller import caller_of
from .export_jobs import Job
from .export_s3 import S3Bucket
from .job_worker import TRANSIENT, JobWorker
from .snapshot import deleted_sql, lists_deleted, page_sql, provenance_sql

log = logging.getLogger("headless_ehr.bulk")

PAGE_BYTES = 8 * 1024 * 1024  # a page ends early past this much output: big resources, few per page
PREFETCH = 64  # rows the cursor holds at a time


class LeaseLost(Exception):
    """The job was cancelled or another node holds it now."""


def streams_of(principal: Principal, job: Job) -> list[tuple[str, str]]:
    """(kind, type) of every stream of the job, in order: output, the latest Provenances of
    what it holds (when asked), then deletions."""
    spec = job.spec
    out = [("output", t) for t in spec.types]
    if spec.provenance and "Provenance" not in spec.types:  # else every reachable one is in the output
        out.append(("provenance", "Provenance"))
    return out + [("deleted", t) for t in spec.types if lists_deleted(principal, spec, t)]


def _start_of_stream(progress: dict[str, Any], stream: int) -> None:
    progress.update(stream=stream, after="", part=1, part_bytes=0, part_lines=0, part_after="", part_name="")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _deletion_line(rtype: str, rid: str) -> bytes:
    bundle = {"resourceType": "Bundle", "type": "transaction"}
    bundle["entry"] = [{"request": {"method": "DELETE", "url": f"{rtype}/{rid}"}}]  # type: ignore[list-item]
    return fhir_json.dumps(bundle) + b"\n"


class _Renderer:
    """A stored resource as the caller may see it, reduced as _elements asks: one line."""

    def __init__(self, principal: Principal, elements: dict[str, list[str]]) -> None:
        self.principal = principal
        self.elements = elements

    def line(self, rtype: str, content: bytes) -> bytes:
        if hidden_elements(self.principal, rtype):
            content = masked(self.principal, rtype, content)
        wanted = self.elements.get(rtype, []) + self.elements.get("*", [])
        if wanted:
            content = fhir_json.dumps(subset(fhir_json.loads(content, check_duplicates=False), None, wanted))
        return content + b"\n"


class ExportRun:
    """One claim of one job: resume where its progress says, run to the end."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, job: Job, bucket: S3Bucket | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self.job = job
        self.bucket = bucket
        self._uploads: list[Path] = []  # complete parts to store in the bucket before the next commit
        self._unsynced: list[Path] = []  # complete parts to flush to disk (off the event loop) before it
        self.principal = caller_of(job.caller)
        self.dir = export_files.job_dir(settings.data_dir, job.id)
        self.streams = streams_of(self.principal, job)
        self.render = _Renderer(self.principal, job.spec.elements)
        assert job.lease_token is not None
        self.claim = job.lease_token.replace("-", "")[:8]  # names this claim's files
        self.progress: dict[str, Any] = dict(job.progress) or {"files": 0, "written": 0}
        self._new_files: list[dict[str, Any]] = []  # completed since the last commit (bulk_export_file)
        if "stream" not in self.progress:
            _start_of_stream(self.progress, 0)
        self._file: BinaryIO | None = None

    def _own_name(self) -> str:
        """This claim's name for the current part."""
        kind, rtype = self.streams[self.progress["stream"]]
        return export_files.file_name(kind, rtype, self.progress["part"], self.claim)

    def _path(self) -> Path:
        return self.dir / self.progress["part_name"]

    def _resume_files(self) -> None:
        """Begin this claim's file of the current part with exactly the committed bytes of
        the part so far: copied from the file of the claim that committed them (which a
        stalled node may still be appending to: it is never written again, by us), or,
        when that file is gone or short (another node's disk, lost by the OS), the part
        is done again from its start."""
        if self.progress["stream"] >= len(self.streams):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        p = self.progress
        own = self._own_name()
        earlier = self.dir / p["part_name"] if p["part_name"] else None
        if p["part_bytes"] and earlier is not None and earlier.exists() and earlier.stat().st_size >= p["part_bytes"]:
            with open(earlier, "rb") as src, open(self.dir / own, "wb") as out:
                left = p["part_bytes"]
                while left:
                    chunk = src.read(min(left, 1024 * 1024))
                    out.write(chunk)
                    left -= len(chunk)
        elif p["part_bytes"]:
            p["written"] -= p["part_lines"]
            p.update(after=p["part_after"], part_bytes=0, part_lines=0)
        if earlier is not None and earlier.name != own:
            earlier.unlink(missing_ok=True)
        p["part_name"] = own

    def _open(self) -> BinaryIO:
        if self._file is None:
            self._file = open(self._path(), "ab", buffering=1024 * 1024)  # noqa: SIM115 (closed by _close)
        return self._file

    def _close(self, durable: bool) -> None:
        """Close the current file; durable: it is flushed to disk before the next commit."""
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None
            if durable:
                self._unsynced.append(self._path())

    def _cut_part(self) -> None:
        """The current part is full: record it and begin the next."""
        self._close(durable=True)
        kind, rtype = self.streams[self.progress["stream"]]
        p = self.progress
        self._new_files.append(
            {
                "seq": p["files"] + len(self._new_files),
                "kind": kind,
                "type": rtype,
                "name": p["part_name"],
                "count": p["part_lines"],
                "bytes": p["part_bytes"],
            }
        )
        if self.bucket is not None:
            self._uploads.append(self._path())
        p.update(part=p["part"] + 1, part_bytes=0, part_lines=0, part_after=p["after"])
        p["part_name"] = self._own_name()

    def _write(self, rid: str, line: bytes) -> None:
        p = self.progress
        if p["part_lines"] and p["part_bytes"] + len(line) > self.settings.bulk_file_bytes:
            self._cut_part()
        self._open().write(line)
        p["part_bytes"] += len(line)
        p["part_lines"] += 1
        p["written"] += 1
        p["after"] = rid

    async def _page(self, conn: asyncpg.Connection) -> int:
        """Write the stream's next page; the number of lines written (0: the stream is done)."""
        kind, rtype = self.streams[self.progress["stream"]]
        job, limit = self.job, self.settings.bulk_page_rows
        after = self.progress["after"]
        if kind == "output":
            statement, args = page_sql(
                self.principal, job.spec, rtype, job.transaction_time, after, limit, job.local_base
            )
        elif kind == "provenance":
            statement, args = provenance_sql(
                self.principal, job.spec, job.transaction_time, after, limit, job.local_base
            )
        else:
            statement, args = deleted_sql(job.spec, rtype, job.transaction_time, self.progress["after"], limit)
        lines = size = 0
        async with conn.transaction(readonly=True):
            async for row in conn.cursor(statement, *args, prefetch=PREFETCH):
                line = _deletion_line(rtype, row[0]) if kind == "deleted" else self.render.line(rtype, row[1])
                self._write(row[0], line)
                lines += 1
                size += len(line)
                if size >= PAGE_BYTES:
                    break
        return lines

    async def _commit(self) -> None:
        if self._file is not None:
            self._file.flush()
        while self._unsynced:  # complete parts reach the disk before the commit that records them
            await asyncio.to_thread(_fsync, self._unsynced.pop())
        while self._uploads:  # before the commit that records them (a crash before it uploads them again)
            path = self._uploads[0]
            assert self.bucket is not None
            await asyncio.to_thread(self.bucket.upload, path, self.job.id, path.name)
            path.unlink()
            self._uploads.pop(0)
        await self._record(export_jobs.record(self.pool, self.job, self._counted(), self._new_files))

    def _counted(self) -> dict[str, Any]:
        """The progress to commit: with the files completed since the last commit counted in."""
        return {**self.progress, "files": self.progress["files"] + len(self._new_files)}

    async def _record(self, committing: Awaitable[bool]) -> None:
        if not await committing:
            raise LeaseLost
        self.progress["files"] += len(self._new_files)
        self._new_files = []

    async def run(self) -> None:
        await asyncio.to_thread(self._resume_files)  # may copy a part of up to EHR_BULK_FILE_BYTES
        async with self.pool.acquire() as conn:
            while self.progress["stream"] < len(self.streams):
                if await self._page(conn):
                    await self._commit()
                    continue
                wrote = bool(self.progress["part_lines"])
                if wrote:  # the stream is done: its last part too
                    self._cut_part()
                self._close(durable=False)
                _start_of_stream(self.progress, self.progress["stream"] + 1)
                if self.progress["stream"] < len(self.streams):
                    self._resume_files()
                if wrote:  # passing an empty type needs no commit: redoing it after a crash costs nothing
                    await self._commit()
        hours = self.settings.bulk_retention_hours
        await self._record(export_jobs.finish(self.pool, self.job, self._counted(), self._new_files, hours))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._close(durable=False)


async def remove_files(settings: Settings, bucket: S3Bucket | None, job_id: str) -> None:
    """A job's files, in the data dir and in the bucket."""
    export_files.remove(settings.data_dir, job_id)
    if bucket is not None:
        await asyncio.to_thread(bucket.remove, job_id)


class ExportWorker(JobWorker[Job]):
    """This node's runner: claims open jobs (any node's), one at a time, and sweeps expired ones."""

    what = "bulk export worker"
    lease_seconds = export_jobs.LEASE_SECONDS

    def __init__(self, pool: asyncpg.Pool, settings: Settings, bucket: S3Bucket | None = None) -> None:
        super().__init__(pool, log)
        self.settings = settings
        self.bucket = bucket

    async def claim(self) -> Job | None:
        return await export_jobs.claim(self.pool)

    async def renew(self, claim: Job) -> bool:
        return await export_jobs.renew(self.pool, claim)

    async def release(self, claim: Job) -> None:
        await export_jobs.release(self.pool, claim)

    async def sweep(self) -> None:
        """Remove the jobs past their expiry and their files."""
        for job_id in await export_jobs.expired(self.pool):
            await remove_files(self.settings, self.bucket, job_id)

    async def run(self, claim: Job) -> None:
        job = claim
        run: ExportRun | None = None
        try:
            run = ExportRun(self.pool, self.settings, job, self.bucket)
            await run.run()
            log.info("bulk export %s completed: %d lines", job.id, run.progress["written"])
        except LeaseLost:
            current = await export_jobs.get(self.pool, job.id)
            if current is None or current.status == "cancelled":
                await remove_files(self.settings, self.bucket, job.id)
        except (*TRANSIENT, asyncio.CancelledError):
            raise  # the lease runs out; this node or another takes the job over
        except Exception as exc:
            log.exception("bulk export %s failed", job.id)
            await export_jobs.fail(self.pool, job, f"the export failed: {exc}", self.settings.bulk_retention_hours)
            await remove_files(self.settings, self.bucket, job.id)
        finally:
            if run is not None:
                run.close()
