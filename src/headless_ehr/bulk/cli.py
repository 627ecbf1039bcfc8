"""The `ehr import` command's driver: progress bar and summary around the Importer."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..auth.principal import SYSTEM
from ..config import Settings
from ..db.migrate import migrate
from ..db.pool import create_pool
from ..fhir.validation import validator
from ..store.reindex import load_registry
from ..store.repository import ResourceStore
from .importer import Importer, find_sources, total_bytes


async def run_import(settings: Settings, paths: list[str], batch_size: int, concurrency: int) -> int:
    console = Console(stderr=True)
    try:
        sources = find_sources(paths)
    except FileNotFoundError as exc:
        console.print(f"[red]ehr import: {exc}")
        return 2
    assert settings.database_url
    pool = await create_pool(settings.database_url, min_size=1, max_size=concurrency + 1)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        await load_registry(pool)
        store = ResourceStore(pool, validator().validate, settings.max_page_size)
        columns = (
            TextColumn("[bold]import"),
            BarColumn(),
            TextColumn("{task.fields[resources]:,} resources"),
            TextColumn("{task.fields[rate]:,.0f}/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("import", total=total_bytes(sources), resources=0, rate=0.0)
            counters = {"resources": 0}

            def advance(done_bytes: int, done_resources: int) -> None:
                counters["resources"] += done_resources
                elapsed = progress.tasks[0].elapsed or 1e-9
                progress.update(
                    task,
                    advance=done_bytes,
                    resources=counters["resources"],
                    rate=counters["resources"] / elapsed,
                )

            importer = Importer(
                pool, store, SYSTEM, batch_size=batch_size, concurrency=concurrency, on_progress=advance
            )
            report = await importer.run(sources)
    finally:
        await pool.close()
    table = Table(title="ehr import")
    table.add_column("files")
    table.add_column("resources loaded")
    table.add_column("resources/s")
    table.add_column("skipped (already imported)")
    table.add_column("failures")
    table.add_row(
        str(report.files),
        f"{report.resources:,}",
        f"{report.rate:,.0f}",
        str(report.skipped_units),
        str(len(report.failures)),
    )
    console.print(table)
    for failure in report.failures[:50]:
        console.print(f"[red]failed[/] {failure.source} {failure.unit}: {failure.message}")
    if len(report.failures) > 50:
        console.print(f"... and {len(report.failures) - 50} more failures")
    return 0 if not report.failures else 1
