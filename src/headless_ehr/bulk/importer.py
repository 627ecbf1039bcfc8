"""`ehr import`: load Bundles and NDJSON into the store, resumably.

Every unit of work (one Bundle, or one batch of NDJSON lines) runs in one database
transaction together with the update of `import_progress`, so after an interruption
the next run continues after the last committed unit and nothing is loaded twice.
Writes go through the same store code as the API (validation and search indexing
included); creates are batched into one statement per unit.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from ..auth.principal import Principal
from ..fhir import json as fhir_json
from ..fhir.outcome import FhirError
from ..store.ids import new_id
from ..store.repository import ResourceStore
from ..store.transaction import BundleProcessor

SUFFIXES = (".json", ".json.gz", ".ndjson", ".ndjson.gz")


@dataclass
class Failure:
    source: str
    unit: str  # "entry 3", "line 17", "bundle"
    message: str


@dataclass
class ImportReport:
    files: int = 0
    resources: int = 0
    skipped_units: int = 0  # already imported by an earlier run
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0


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


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def _ndjson_batches(data: bytes, size: int) -> Iterator[tuple[int, list[tuple[int, bytes]]]]:
    """(unit number, [(line number, line)]) for each batch of non-empty lines."""
    batch: list[tuple[int, bytes]] = []
    unit = 0
    for number, line in enumerate(data.splitlines(), start=1):
        if line.strip():
            batch.append((number, line))
            if len(batch) >= size:
                yield unit, batch
                unit, batch = unit + 1, []
    if batch:
        yield unit, batch


class Importer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: ResourceStore,
        principal: Principal,
        *,
        base_url: str = "http://localhost/fhir",
        batch_size: int = 500,
        concurrency: int = 3,
        on_progress: Callable[[int, int], None] | None = None,  # (bytes done, resources done)
    ):
        self.pool = pool
        self.store = store
        self.principal = principal
        self.processor = BundleProcessor(store, pool, principal, base_url)
        self.batch_size = batch_size
        self.concurrency = concurrency
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
                    self.report.failures.append(Failure(str(sources[index]), "file", f"not finished: {exc!r}"))

        await asyncio.gather(*(worker() for _ in range(max(1, self.concurrency))))
        self.report.seconds = time.monotonic() - started
        return self.report

    async def _file(self, path: Path) -> None:
        key, size = _source_info(path)
        row = await self.pool.fetchrow("SELECT position, done FROM import_progress WHERE source = $1", key)
        if row is not None and row["done"]:
            self.report.skipped_units += 1
            self.on_progress(size, 0)
            return
        start_at = row["position"] if row is not None else 0
        try:
            data = _read(path)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            self.report.failures.append(Failure(str(path), "file", f"cannot read: {exc}"))
            return
        if path.name.endswith((".ndjson", ".ndjson.gz")):
            await self._ndjson(path, key, data, start_at)
        else:
            await self._json(path, key, data, start_at)
        await self.pool.execute(
            "INSERT INTO import_progress (source, position, done) VALUES ($1, 0, true)"
            " ON CONFLICT (source) DO UPDATE SET done = true, updated_at = now()",
            key,
        )
        self.on_progress(size, 0)

    async def _commit_progress(self, conn: asyncpg.Connection, key: str, position: int) -> None:
        await conn.execute(
            "INSERT INTO import_progress (source, position) VALUES ($1, $2)"
            " ON CONFLICT (source) DO UPDATE SET position = $2, updated_at = now()",
            key,
            position,
        )

    # -- JSON: one Bundle or one resource ----------------------------------------------

    async def _json(self, path: Path, key: str, data: bytes, start_at: int) -> None:
        if start_at > 0:
            self.report.skipped_units += 1
            return
        try:
            document = fhir_json.loads(data, check_duplicates=False)
        except fhir_json.JsonError as exc:
            self.report.failures.append(Failure(str(path), "file", str(exc)))
            return
        if not isinstance(document, dict):
            self.report.failures.append(Failure(str(path), "file", "not a FHIR resource"))
            return
        kind = document.get("type") if document.get("resourceType") == "Bundle" else None
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await _no_flush_wait(conn)
                if kind == "transaction":
                    result = await self.processor.transaction(document, conn=conn)
                    count = len(result.items)
                elif kind == "batch":
                    result = await self.processor.batch(document)
                    count = self._count_batch(path, result)
                elif kind in ("collection", "searchset", "history"):
                    resources = [e.get("resource") for e in document.get("entry") or [] if isinstance(e, dict)]
                    count = await self._load(conn, path, [(i, r) for i, r in enumerate(resources) if r])
                else:
                    count = await self._load(conn, path, [(0, document)])
                await self._commit_progress(conn, key, 1)
            self.report.resources += count
            self.on_progress(0, count)
        except FhirError as exc:
            self.report.failures.append(Failure(str(path), "bundle", "; ".join(i.diagnostics for i in exc.issues)))

    def _count_batch(self, path: Path, result: Any) -> int:
        ok = 0
        for i, item in enumerate(result.items):
            if item.response.get("status", "").startswith(("200", "201")):
                ok += 1
            else:
                outcome = item.response.get("outcome") or {}
                message = "; ".join(issue.get("diagnostics", "") for issue in outcome.get("issue", []))
                self.report.failures.append(Failure(str(path), f"entry {i}", message))
        return ok

    # -- NDJSON: batches of lines -------------------------------------------------------

    async def _ndjson(self, path: Path, key: str, data: bytes, start_at: int) -> None:
        for unit, batch in _ndjson_batches(data, self.batch_size):
            if unit < start_at:
                self.report.skipped_units += 1
                continue
            parsed: list[tuple[int, Any]] = []
            for number, line in batch:
                try:
                    parsed.append((number, fhir_json.loads(line, check_duplicates=False)))
                except fhir_json.JsonError as exc:
                    self.report.failures.append(Failure(str(path), f"line {number}", str(exc)))
            async with self.pool.acquire() as conn, conn.transaction():
                await _no_flush_wait(conn)
                count = await self._load(conn, path, parsed, unit_name="line")
                await self._commit_progress(conn, key, unit + 1)
            self.report.resources += count
            self.on_progress(0, count)

    async def _load(
        self, conn: asyncpg.Connection, path: Path, items: list[tuple[int, Any]], unit_name: str = "entry"
    ) -> int:
        """Create or update resources inside conn's transaction; failures are reported
        per resource (each runs in a savepoint) and do not stop the others."""
        store = self.store.bound(conn)
        creates, updates = [], []
        for number, resource in items:
            if not isinstance(resource, dict):
                self.report.failures.append(Failure(str(path), f"{unit_name} {number}", "not a FHIR resource"))
                continue
            rid = resource.get("id")
            (updates if rid else creates).append((number, resource))
        if updates:  # ids already present are updates; the rest can be batched creates
            by_type: dict[str, list[str]] = {}
            for _, r in updates:
                by_type.setdefault(str(r.get("resourceType")), []).append(str(r["id"]))
            existing: set[tuple[str, str]] = set()
            for rtype, ids in by_type.items():
                rows = await conn.fetch(
                    "SELECT id FROM resource WHERE resource_type = $1 AND id = ANY($2::text[])", rtype, ids
                )
                existing.update((rtype, r[0]) for r in rows)
            still = []
            for number, r in updates:
                if (r.get("resourceType"), r["id"]) in existing:
                    still.append((number, r))
                else:
                    creates.append((number, r))
            updates = still
        loaded = 0
        prepared, numbers = [], []
        for number, resource in creates:
            try:
                rid = resource.get("id") or new_id()
                prepared.append(store.prepare_create(self.principal, resource, rid, "POST"))
                numbers.append(number)
            except FhirError as exc:
                self.report.failures.append(Failure(str(path), f"{unit_name} {number}", _message(exc)))
        if prepared:
            try:
                async with conn.transaction():
                    await store.insert_prepared(prepared)
                loaded += len(prepared)
            except FhirError:  # a duplicate id inside the batch: fall back to one by one
                for number, item in zip(numbers, prepared, strict=True):
                    try:
                        async with conn.transaction():
                            await store.insert_prepared([item])
                        loaded += 1
                    except FhirError as exc:
                        self.report.failures.append(Failure(str(path), f"{unit_name} {number}", _message(exc)))
        for number, resource in updates:
            try:
                async with conn.transaction():
                    await store.update(self.principal, resource["resourceType"], resource["id"], resource)
                loaded += 1
            except FhirError as exc:
                self.report.failures.append(Failure(str(path), f"{unit_name} {number}", _message(exc)))
        return loaded


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
