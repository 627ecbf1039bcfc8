"""`ehr import`: load Bundles and NDJSON into the store, resumably.

Every unit of work (one Bundle, or one batch of NDJSON lines) runs in one database
transaction together with its bookkeeping: `import_progress` (how far the file is
loaded) and `import_failed` (which of its lines or entries failed). So after an
interruption the next run continues after the last committed unit, nothing is loaded
twice (a `batch` Bundle's entries included), and a rerun retries exactly what failed.

Files are streamed: NDJSON line by line (through gzip too), and a Bundle is read only
up to `max_bundle_bytes`, so memory does not grow with the size of a file.

Writes go through the same store code as the API (validation and search indexing
included); creates are batched into one statement per unit. `$import` loads its NDJSON
inputs through this same path (load_ndjson), committing each unit's progress to its
job's tables instead (a Ledger: bulk/import_worker.py). A resource id that is
in two files (or in two units loading at once) is created once and updated by the
other, whichever comes first.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import asyncpg

from ..auth.principal import Principal
from ..fhir import json as fhir_json
from ..fhir.outcome import FhirError
from ..store.ids import new_id
from ..store.repository import PreparedCreate, ResourceStore
from ..store.transaction import BundleProcessor

SUFFIXES = (".json", ".json.gz", ".ndjson", ".ndjson.gz")
DEFAULT_MAX_BUNDLE_BYTES = 256 * 1024 * 1024
_READ_CHUNK = 1024 * 1024
_UNIT_ATTEMPTS = 3  # a unit that deadlocks with a parallel one is run again
_INSERT_ROUNDS = 5  # batched inserts retried after moving ids another unit created
_YIELD_EVERY = 50  # resources validated and indexed between two yields to the event loop

Failed = tuple[int, str]  # (line number or entry index, message)


@dataclass
class Failure:
    source: str
    unit: str  # "entry 3", "line 17", "file"
    message: str


@dataclass
class ImportReport:
    files: int = 0  # files this run was given
    files_loaded: int = 0  # loaded to the end without a failure
    files_failed: int = 0  # with at least one failure (a rerun retries them)
    files_skipped: int = 0  # loaded in full by an earlier run
    resources: int = 0  # resources created or updated
    resources_failed: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0

    def add(self, other: ImportReport) -> None:
        """Fold in another worker's report (the run's time is the slowest worker's)."""
        for name in ("files", "files_loaded", "files_failed", "files_skipped", "resources", "resources_failed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures += other.failures
        self.seconds = max(self.seconds, other.seconds)

    def summary(self) -> str:
        """What counts files and what counts resources, in plain words."""
        files = f"{self.files:,} file{'' if self.files == 1 else 's'}: {self.files_loaded:,} loaded"
        if self.files_skipped:
            files += f", {self.files_skipped:,} already imported"
        files += f", {self.files_failed:,} with failures"
        return f"{files}; {self.resources:,} resources loaded, {self.resources_failed:,} failed"


class _FileFailed(Exception):
    """The file as a whole could not be loaded; nothing of the unit at hand committed."""

    def __init__(self, message: str, resources: int = 0):
        super().__init__(message)
        self.resources = resources  # resources that failed with it, when known


def find_sources(paths: list[str]) -> list[Path]:
    """Every importable file under the given files and folders, in a stable order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
    return found


def _source_info(path: Path) -> tuple[str, int]:
    """(progress key, size): the key changes when the file does."""
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}", stat.st_size


# -- reading: streamed and bounded ---------------------------------------------------


@contextmanager
def _open(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes as a stream, decompressed on the fly when gzipped."""
    try:
        stream: IO[bytes] = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise _FileFailed(f"cannot read: {exc}") from None
    with stream:
        yield stream


_READ_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError


def read_bounded(path: Path, limit: int) -> bytes:
    """The whole (decompressed) file, refused as soon as it passes limit bytes."""
    parts: list[bytes] = []
    total = 0
    with _open(path) as stream:
        try:
            while chunk := stream.read(_READ_CHUNK):
                total += len(chunk)
                if total > limit:  # stop here: a gzip bomb is never inflated further
                    raise _FileFailed(
                        f"larger than EHR_IMPORT_MAX_BUNDLE_BYTES ({limit:,} bytes once decompressed);"
                        " split it, or raise the limit"
                    )
                parts.append(chunk)
        except _READ_ERRORS as exc:
            raise _FileFailed(f"cannot read: {exc}") from None
    return b"".join(parts)


def ndjson_lines(stream: IO[bytes], limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) for each non-empty line, read one at a time; a line longer
    than limit bytes is skipped unread and given as None."""
    number = 0
    try:
        while line := stream.readline(limit + 1):
            number += 1
            if len(line) > limit and not line.endswith(b"\n"):
                while (rest := stream.readline(_READ_CHUNK)) and not rest.endswith(b"\n"):
                    pass
                yield number, None
            elif line.strip():
                yield number, line
    except _READ_ERRORS as exc:
        raise _FileFailed(f"cannot read after line {number}: {exc}") from None


# -- the importer --------------------------------------------------------------------


@dataclass
class _FileRun:
    """One file being loaded: its progress key and whether anything of it failed."""

    path: Path
    key: str
    failed: bool = False
    bytes_reported: int = 0  # of the file's size (compressed, as on disk), for the progress bar
    ledger: Ledger | None = None  # None: import_progress and import_failed keep the file's progress
    resource_type: str | None = None  # every line must be one of this type (an $import input)


class Ledger(Protocol):
    """Where a unit's progress is committed when it is not `ehr import`'s own tables (an
    $import input: bulk/import_jobs.py). record() runs inside the unit's transaction; an
    exception rolls the unit back with it."""

    async def record(self, conn: asyncpg.Connection, position: int, loaded: int, failed: list[Failed]) -> None: ...


class InputUnreadable(Exception):
    """An NDJSON source could not be read on (bad gzip, I/O error); what was committed stays."""


class Importer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: ResourceStore,
        principal: Principal,
        *,
        base_url: str | None = None,  # this server's FHIR base; None: the store's (EHR_PUBLIC_BASE_URL)
        batch_size: int = 500,
        concurrency: int = 3,
        max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
        on_progress: Callable[[int, int], None] | None = None,  # (bytes done, resources done)
    ):
        self.pool = pool
        self.store = store
        self.principal = principal
        # one base for bundle URLs and extraction: only absolute URLs under it are local
        self.processor = BundleProcessor(store, principal, base_url if base_url is not None else store.local_base)
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.max_bundle_bytes = max_bundle_bytes
        self.on_progress = on_progress or (lambda _b, _r: None)
        self.report = ImportReport()

    async def run(self, sources: list[Path], claim: Callable[[], int | None] | None = None) -> ImportReport:
        """Load sources; with claim, load only the ones whose index claim() hands out
        (shared with other processes: whoever is free takes the next file)."""
        started = time.monotonic()
        if claim is None:
            position = iter(range(len(sources)))

            def claim() -> int | None:
                return next(position, None)

        async def worker() -> None:
            while (index := claim()) is not None:
                self.report.files += 1
                try:
                    await self._file(sources[index])
                except Exception as exc:  # e.g. the file vanished, the database went away
                    # Reported, and the file's committed units stay: a rerun resumes it.
                    self.report.files_failed += 1
                    self.report.failures.append(Failure(str(sources[index]), "file", f"not finished: {exc!r}"))

        await asyncio.gather(*(worker() for _ in range(max(1, self.concurrency))))
        self.report.seconds = time.monotonic() - started
        return self.report

    async def _file(self, path: Path) -> None:
        key, size = _source_info(path)
        row = await self.pool.fetchrow("SELECT position, done FROM import_progress WHERE source = $1", key)
        position, done = (row["position"], row["done"]) if row is not None else (0, False)
        retry = {r[0] for r in await self.pool.fetch("SELECT item FROM import_failed WHERE source = $1", key)}
        if done and not retry:
            self.report.files_skipped += 1
            self.on_progress(size, 0)
            return
        run = _FileRun(path, key)
        try:
            if path.name.endswith((".ndjson", ".ndjson.gz")):
                await self._ndjson(run, position, retry)
            else:
                await self._json(run, position, retry)
        except _FileFailed as exc:  # not marked done: a rerun tries the file again
            self.report.failures.append(Failure(str(path), "file", str(exc)))
            self.report.files_failed += 1
            self.report.resources_failed += exc.resources
            self.on_progress(size - run.bytes_reported, 0)
            return
        await self.pool.execute(
            "INSERT INTO import_progress (source, position, done) VALUES ($1, 0, true)"
            " ON CONFLICT (source) DO UPDATE SET done = true, updated_at = now()",
            key,
        )
        if run.failed:
            self.report.files_failed += 1
        else:
            self.report.files_loaded += 1
        self.on_progress(size - run.bytes_reported, 0)

    async def _unit(
        self,
        run: _FileRun,
        position: int,
        retried: list[int],
        label: str,
        work: Callable[[asyncpg.Connection, int], Awaitable[tuple[int, list[Failed]]]],
    ) -> None:
        """Run work(conn, attempt) -> (resources loaded, failed items) in one transaction
        with the file's progress and failure records, so they commit or vanish together."""
        for attempt in range(_UNIT_ATTEMPTS):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    await _no_flush_wait(conn)
                    loaded, failed = await work(conn, attempt)
                    if run.ledger is not None:
                        await run.ledger.record(conn, position, loaded, failed)
                        break
                    await conn.execute(
                        "INSERT INTO import_progress (source, position) VALUES ($1, $2) ON CONFLICT (source)"
                        " DO UPDATE SET position = greatest(import_progress.position, $2), updated_at = now()",
                        run.key,
                        position,
                    )
                    if retried:
                        await conn.execute(
                            "DELETE FROM import_failed WHERE source = $1 AND item = ANY($2::bigint[])",
                            run.key,
                            retried,
                        )
                    if failed:
                        await conn.execute(
                            "INSERT INTO import_failed (source, item) SELECT $1, unnest($2::bigint[])"
                            " ON CONFLICT DO NOTHING",
                            run.key,
                            [item for item, _ in failed],
                        )
                break
            except asyncpg.TransactionRollbackError:  # a deadlock with a parallel unit: run it again
                if attempt == _UNIT_ATTEMPTS - 1:
                    raise
        if failed:
            run.failed = True
            self.report.resources_failed += len(failed)
        if failed and run.ledger is None:  # a ledger keeps its own (bounded) record of them
            self.report.failures += [
                Failure(str(run.path), label if label == "resource" else f"{label} {i}", m) for i, m in failed
            ]
        self.report.resources += loaded
        self.on_progress(0, loaded)

    # -- JSON: one Bundle or one resource ----------------------------------------------

    async def _json(self, run: _FileRun, position: int, retry: set[int]) -> None:
        if position >= 1 and not retry:
            return  # committed by an earlier run that stopped before marking the file done
        data = read_bounded(run.path, self.max_bundle_bytes)
        first = _parse_document(data)
        kind = first.get("type") if first.get("resourceType") == "Bundle" else None
        entries = first.get("entry") if kind else None
        entries = entries if isinstance(entries, list) else []
        # on a rerun only the entries that failed; on a deadlock retry a fresh parse,
        # since a transaction rewrites the references of the Bundle it ran
        wanted = sorted(i for i in retry if i < len(entries)) if position >= 1 else list(range(len(entries)))

        def document(attempt: int) -> dict[str, Any]:
            return first if attempt == 0 else _parse_document(data)

        if kind == "transaction":

            async def work(conn: asyncpg.Connection, attempt: int) -> tuple[int, list[Failed]]:
                try:
                    result = await self.processor.transaction(document(attempt), conn=conn)
                except FhirError as exc:  # all or nothing: the whole Bundle failed
                    raise _FileFailed(_message(exc), resources=len(entries)) from None
                return len(result.items), []

        elif kind == "batch":

            async def work(conn: asyncpg.Connection, attempt: int) -> tuple[int, list[Failed]]:
                doc = document(attempt)
                doc["entry"] = [doc["entry"][i] for i in wanted]
                try:
                    result = await self.processor.batch(doc, conn=conn)
                except FhirError as exc:  # the Bundle itself is malformed
                    raise _FileFailed(_message(exc), resources=len(wanted)) from None
                return _batch_outcome(wanted, result)

        elif kind in ("collection", "searchset", "history"):

            async def work(conn: asyncpg.Connection, attempt: int) -> tuple[int, list[Failed]]:
                found = document(attempt)["entry"]
                items = [(i, found[i].get("resource")) for i in wanted if isinstance(found[i], dict)]
                return await self._load(conn, [(i, r) for i, r in items if r is not None])

        else:
            wanted = [0]

            async def work(conn: asyncpg.Connection, attempt: int) -> tuple[int, list[Failed]]:
                return await self._load(conn, [(0, document(attempt))])

        label = "entry" if kind else "resource"
        await self._unit(run, 1, [i for i in wanted if i in retry], label, work)

    # -- NDJSON: batches of lines -------------------------------------------------------

    async def load_ndjson(self, path: Path, position: int, ledger: Ledger, resource_type: str | None = None) -> None:
        """Load an NDJSON file (gzip too) after its first `position` lines, committing each
        unit's progress and line errors through ledger (the $import path: bulk/import_worker.py);
        with resource_type, a line of another type is an error. InputUnreadable when the
        file cannot be read on."""
        run = _FileRun(path, str(path), ledger=ledger, resource_type=resource_type)
        try:
            await self._ndjson(run, position, set())
        except _FileFailed as exc:
            raise InputUnreadable(str(exc)) from None

    async def _ndjson(self, run: _FileRun, position: int, retry: set[int]) -> None:
        """Lines after `position`, and earlier ones that failed, in units of batch_size."""
        with _open(run.path) as stream:
            batch: list[tuple[int, bytes | None]] = []
            held = 0  # bytes of the lines in batch: a unit holds at most max_bundle_bytes
            for number, line in ndjson_lines(stream, self.max_bundle_bytes):
                if number <= position and number not in retry:
                    continue
                batch.append((number, line))
                held += len(line or b"")
                if len(batch) >= self.batch_size or held >= self.max_bundle_bytes:
                    await self._ndjson_unit(run, batch, retry)
                    batch, held = [], 0
                    read = max(run.bytes_reported, _bytes_read(stream))  # a large file moves the bar
                    self.on_progress(read - run.bytes_reported, 0)
                    run.bytes_reported = read
            if batch:
                await self._ndjson_unit(run, batch, retry)

    async def _ndjson_unit(self, run: _FileRun, batch: list[tuple[int, bytes | None]], retry: set[int]) -> None:
        parsed: list[tuple[int, Any]] = []
        bad: list[Failed] = []
        for number, line in batch:
            if line is None:
                bad.append((number, f"longer than EHR_IMPORT_MAX_BUNDLE_BYTES ({self.max_bundle_bytes:,} bytes)"))
                continue
            try:
                resource = fhir_json.loads(line, check_duplicates=False)
            except fhir_json.JsonError as exc:
                bad.append((number, str(exc)))
                continue
            wrong = run.resource_type is not None and _type_of(resource) != run.resource_type
            if wrong:  # an $import input declares its type: a line of another is refused
                bad.append((number, f"a {_type_of(resource)[:64]} in an input of type {run.resource_type}"))
            else:
                parsed.append((number, resource))

        async def work(conn: asyncpg.Connection, _attempt: int) -> tuple[int, list[Failed]]:
            loaded, failed = await self._load(conn, parsed)
            return loaded, bad + failed

        retried = [n for n, _ in batch if n in retry]
        await self._unit(run, batch[-1][0], retried, "line", work)

    # -- resources: batched creates, updates for ids that exist --------------------------

    async def _load(self, conn: asyncpg.Connection, items: list[tuple[int, Any]]) -> tuple[int, list[Failed]]:
        """Create or update resources inside conn's transaction; failures are returned
        per resource (each update runs in a savepoint) and do not stop the others.

        A resource whose id exists is an update. New ones are inserted in one batch;
        when a parallel unit created one of their ids meanwhile, the insert fails as a
        whole, and those ids move to the updates before the batch is tried again.
        """
        store = self.store.bound(conn)
        failed: list[Failed] = []
        creates: list[tuple[int, dict[str, Any]]] = []
        with_id: list[tuple[int, dict[str, Any]]] = []
        for number, resource in items:
            if not isinstance(resource, dict):
                failed.append((number, "not a FHIR resource"))
            elif resource.get("id"):
                with_id.append((number, resource))
            else:
                creates.append((number, resource))
        updates: list[tuple[int, dict[str, Any]]] = []
        if with_id:
            existing = await _existing(conn, [_key(r) for _, r in with_id])
            for number, resource in with_id:
                key = _key(resource)
                # an id already stored, or seen earlier in this unit, is an update
                (updates if key in existing else creates).append((number, resource))
                existing.add(key)
        pending: list[tuple[int, dict[str, Any], PreparedCreate]] = []
        for k, (number, resource) in enumerate(creates, 1):
            if k % _YIELD_EVERY == 0:  # in a server ($import), requests get the event loop in between
                await asyncio.sleep(0)
            try:
                rid = resource.get("id") or new_id()
                pending.append((number, resource, store.prepare_create(self.principal, resource, rid, "POST")))
            except FhirError as exc:
                failed.append((number, _message(exc)))
        # one order for every unit, so two units inserting the same ids cannot deadlock
        pending.sort(key=lambda p: (p[2].resource_type, p[2].id))
        loaded = 0
        for _ in range(_INSERT_ROUNDS):
            if not pending:
                break
            try:
                async with conn.transaction():
                    await store.insert_prepared([p[2] for p in pending], self.principal)
                loaded += len(pending)
                pending = []
            except FhirError:  # some id was created meanwhile, by a unit that has committed
                taken = await _existing(conn, [(p[2].resource_type, p[2].id) for p in pending])
                if not taken:
                    break
                updates += [(n, r) for n, r, p in pending if (p.resource_type, p.id) in taken]
                pending = [p for p in pending if (p[2].resource_type, p[2].id) not in taken]
        for number, resource, prepared in pending:  # still refused: one at a time
            try:
                async with conn.transaction():
                    await store.insert_prepared([prepared], self.principal)
                loaded += 1
            except FhirError:
                updates.append((number, resource))
        updates.sort(key=lambda u: (*_key(u[1]), u[0]))  # one order (deadlocks), file order per id
        for number, resource in updates:
            try:
                async with conn.transaction():
                    await store.update(self.principal, resource["resourceType"], resource["id"], resource)
                loaded += 1
            except FhirError as exc:
                failed.append((number, _message(exc)))
        return loaded, failed


def _bytes_read(stream: IO[bytes]) -> int:
    """How far into the file on disk (compressed bytes, for a gzip stream) reading is."""
    raw = getattr(stream, "fileobj", None) or stream
    try:
        return raw.tell()
    except (OSError, ValueError):
        return 0


def _type_of(resource: Any) -> str:
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    return kind if isinstance(kind, str) else "line that is not a FHIR resource"


def _key(resource: dict[str, Any]) -> tuple[str, str]:
    return str(resource.get("resourceType")), str(resource["id"])


async def _existing(conn: asyncpg.Connection, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (type, id) pairs have a stored resource (deleted ones included)."""
    rows = await conn.fetch(
        "SELECT r.resource_type, r.id FROM resource r"
        " JOIN unnest($1::text[], $2::text[]) AS k(t, i) ON r.resource_type = k.t AND r.id = k.i",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r[0], r[1]) for r in rows}


def _parse_document(data: bytes) -> dict[str, Any]:
    try:
        document = fhir_json.loads(data, check_duplicates=False)
    except fhir_json.JsonError as exc:
        raise _FileFailed(str(exc)) from None
    if not isinstance(document, dict):
        raise _FileFailed("not a FHIR resource")
    return document


def _batch_outcome(wanted: list[int], result: Any) -> tuple[int, list[Failed]]:
    """(entries that succeeded, failed entries by their index in the file)."""
    ok = 0
    failed: list[Failed] = []
    for index, item in zip(wanted, result.items, strict=True):
        if item.response.get("status", "")[:1] == "2":  # any 2xx: a DELETE answers 204
            ok += 1
        else:
            outcome = item.response.get("outcome") or {}
            failed.append((index, "; ".join(issue.get("diagnostics", "") for issue in outcome.get("issue", []))))
    return ok, failed


async def _no_flush_wait(conn: asyncpg.Connection) -> None:
    """Commit this unit without waiting for its WAL to reach disk.

    Safe for import: the unit and its import_progress row commit together, so a
    crash can only lose whole units that the next run then loads again; the
    database stays consistent (PostgreSQL's asynchronous commit never tears a
    transaction).
    """
    await conn.execute("SET LOCAL synchronous_commit = off")


def _message(exc: FhirError) -> str:
    return "; ".join(i.diagnostics + (f" at {i.expression}" if i.expression else "") for i in exc.issues)


def total_bytes(sources: list[Path]) -> int:
    return sum(os.path.getsize(p) for p in sources)
