"""The `ehr import` command's driver: worker processes, progress bar and summary.

Validation, indexing and JSON work are CPU-bound Python, so files are shared among
several processes (each with its own connection pool), and the parent only draws the
progress bar from what they report.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..auth.principal import SYSTEM
from ..config import Settings
from ..db.migrate import migrate
from ..db.pool import create_pool
from .importer import Failure, Importer, ImportReport, find_sources, total_bytes


async def _prepare(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
    finally:
        await pool.close()


async def _load(
    settings: Settings,
    sources: list[Path],
    claim: Callable[[], int | None],
    batch_size: int,
    concurrency: int,
    events: queue.Queue,
) -> ImportReport:
    from ..events.service import store_hooks
    from ..fhir.validation import validate_with
    from ..search.extract.compile import set_expression_budget
    from ..store.reindex import load_registry
    from ..store.repository import ResourceStore

    assert settings.database_url
    pool = await create_pool(settings.database_url, min_size=1, max_size=concurrency + 1)
    try:
        await load_registry(pool)
        set_expression_budget(settings.search_expression_budget_ms / 1000)  # as the server does
        store = ResourceStore(
            pool,
            validate_with(settings),
            settings.max_page_size,
            local_base=settings.public_base_url,
            hooks=store_hooks(),  # imported Subscriptions and SubscriptionTopics get their state too
        )
        importer = Importer(
            pool,
            store,
            SYSTEM,
            batch_size=batch_size,
            concurrency=concurrency,
            max_bundle_bytes=settings.import_max_bundle_bytes,
            on_progress=lambda b, r: events.put(("progress", b, r)),
        )
        return await importer.run(sources, claim)
    finally:
        await pool.close()


def _warm_up() -> None:
    from ..fhir.definitions import definitions
    from ..fhir.validation import validator
    from ..search.extract import extract

    check = validator()
    for rtype in definitions().resource_types:
        check.validate({"resourceType": rtype})
        extract({"resourceType": rtype})  # compiles the type's extraction plan
    # The workers' garbage collector need not walk (or copy-on-write touch) all this.
    gc.collect()
    gc.freeze()
    # A worker holds a few parsed Bundles at a time (tens of thousands of containers
    # each), freed by reference counting as soon as a unit commits, and makes almost no
    # reference cycles. Collections every 50,000 allocations kept re-scanning Bundles
    # still in use and cost ~15% of the pipeline's CPU (measured against GC off); at
    # 500,000 they almost never run and the cost is gone, while cycles that do arise
    # are still collected.
    gc.set_threshold(500_000, 50, 1000)


def _claimer(counter: Any, total: int) -> Callable[[], int | None]:
    """Hands out source indexes 0, 1, ... across processes (counter is shared)."""

    def claim() -> int | None:
        with counter.get_lock():
            index = counter.value
            if index >= total:
                return None
            counter.value = index + 1
        return index

    return claim


def _worker(
    settings: Settings, sources: list[Path], counter: Any, batch_size: int, concurrency: int, events: queue.Queue
) -> None:
    try:
        claim = _claimer(counter, len(sources))
        report = asyncio.run(_load(settings, sources, claim, batch_size, concurrency, events))
        events.put(("done", report))
    except BaseException as exc:  # reported to the parent, which prints it
        events.put(("done", ImportReport(failures=[Failure("import", "process", repr(exc))])))


def run_import(settings: Settings, paths: list[str], batch_size: int, concurrency: int, processes: int) -> int:
    console = Console(stderr=True)
    try:
        sources = find_sources(paths)
    except FileNotFoundError as exc:
        console.print(f"[red]ehr import: {exc}")
        return 2
    assert settings.database_url
    asyncio.run(_prepare(settings.database_url))
    processes = max(1, min(processes, len(sources) or 1))
    # Load the definitions and compile every type's validation rules once, here, and
    # fork: the workers inherit them instead of each spending seconds rebuilding them.
    _warm_up()
    context = multiprocessing.get_context("fork")
    events = context.Manager().Queue()
    # Files are claimed one at a time, in order, by whichever worker is free, so the
    # workers finish together instead of one idling while another has a backlog.
    counter = context.Value("i", 0)
    workers = [
        context.Process(target=_worker, args=(settings, sources, counter, batch_size, concurrency, events), daemon=True)
        for _ in range(processes)
    ]
    for worker in workers:  # before the progress bar starts its thread
        worker.start()
    columns = (
        TextColumn("[bold]import"),
        BarColumn(),
        TextColumn("{task.fields[resources]:,} resources"),
        TextColumn("{task.fields[rate]:,.0f}/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    total = ImportReport()
    loaded = 0  # resources, as the workers commit them (a worker that dies reports no total)
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("import", total=total_bytes(sources), resources=0, rate=0.0)
        running = len(workers)
        while running:
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    break
                continue
            if event[0] == "progress":
                loaded += event[2]
                elapsed = progress.tasks[0].elapsed or 1e-9
                progress.update(task, advance=event[1], resources=loaded, rate=loaded / elapsed)
            else:
                running -= 1
                total.add(event[1])
        for worker in workers:
            worker.join()
    total.resources = loaded
    total.failures += _lost_workers(workers, running)
    _summary(console, total)
    return 0 if not total.failures else 1


def _lost_workers(workers: list[Any], unreported: int) -> list[Failure]:
    """Failures for worker processes that ended without their report (killed, e.g. by
    the OOM killer): what they had claimed is not all loaded, so the run must fail."""
    if not unreported:
        return []
    codes = ", ".join(str(w.exitcode) for w in workers if w.exitcode)
    return [
        Failure(
            "import",
            "process",
            f"{unreported} worker process(es) ended without finishing (exit codes: {codes or 'none'});"
            " run the command again to load the rest",
        )
    ]


def _summary(console: Console, report: ImportReport) -> None:
    # The table's first columns are what bench/ingest.py and bench/search.py read.
    table = Table(title="ehr import")
    for column in ("files", "resources loaded", "resources/s", "files already imported", "failures"):
        table.add_column(column)
    table.add_row(
        str(report.files),
        f"{report.resources:,}",
        f"{report.rate:,.0f}",
        str(report.files_skipped),
        str(len(report.failures)),
    )
    console.print(table)
    console.print(report.summary(), highlight=False, soft_wrap=True)
    if report.files_failed:
        console.print("Run the same command again to retry what failed; what loaded is not loaded twice.")
    for failure in report.failures[:50]:
        console.print(f"[red]failed[/] {failure.source} {failure.unit}: {failure.message}")
    if len(report.failures) > 50:
        console.print(f"... and {len(report.failures) - 50} more failures")
