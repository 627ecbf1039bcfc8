"""`$import` against `ehr import`: the same NDJSON loaded into a fresh database both ways.

    python bench/import_op.py                         # Synthea → NDJSON by $export, then 3 runs of each
    python bench/import_op.py --ndjson DIR --runs 1 --no-record

The NDJSON is the Synthea set (../shared/fhir/synthea, loaded with `ehr import` into
`--source-url`) exported by a system `$export` with files cut at `--part-mb` (so both
loaders have several files per large type to share among their processes), or any folder
of `.ndjson` files given with `--ndjson`. Then, `--runs` times, alternately, on a fresh
database (`--database-url`) after a CHECKPOINT:
- `ehr import --processes P DIR` (P = `--processes`, default one per core): its wall time,
  start-up included, and the rate it reports itself;
- `ehr serve --workers W` (default one per core) started on it (start-up not timed), one
  `$import` kick-off naming every file as a data-dir input, timed from kick-off to
  completion as the job table recorded it (created_at to finished_at).
The target (issue 13): `$import` within 25% of `ehr import`, i.e. its time at most 1.25x,
as the median of each run's ratio (against `ehr import`'s wall time, and, stricter, against
the time its workers report, start-up left out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import results
from export import ASYNC, export_once, load, serve

from search import recreate_database

TARGET = 1.25  # $import's time at most this multiple of `ehr import`'s (issue 13)


async def fresh(dsn: str) -> None:
    await recreate_database(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")  # no run pays for the previous one's WAL
    finally:
        await conn.close()


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def make_ndjson(source_dsn: str, work: Path, part_mb: int, reload: bool) -> Path:
    """The Synthea set as NDJSON files (a system $export of every type), in work/ndjson."""
    if reload:
        load(source_dsn, work)
    proc, base, headers, _ = serve(source_dsn, work / "export-data", 1, {"EHR_BULK_FILE_BYTES": str(part_mb << 20)})
    out = work / "ndjson"
    out.mkdir()
    try:
        job = export_once(base, headers)
        manifest = httpx.get(f"{base}/$export-poll-status?_jobId={job}", headers=headers, timeout=60).json()
        for i, item in enumerate(manifest["output"]):
            target = out / f"{item['type']}-{i:04d}.ndjson"
            with httpx.stream("GET", item["url"], headers=headers, timeout=300) as res, open(target, "wb") as f:
                for chunk in res.iter_bytes(1 << 20):
                    f.write(chunk)
    finally:
        stop(proc)
    return out


def run_cli(dsn: str, folder: Path, processes: int) -> tuple[float, float, int]:
    """(wall seconds, rate as reported, resources) of `ehr import`."""
    asyncio.run(fresh(dsn))
    env = {**os.environ, "EHR_DATABASE_URL": dsn, "COLUMNS": "200"}
    started = time.perf_counter()
    done = subprocess.run(
        ["ehr", "import", "--processes", str(processes), str(folder)], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    match = re.search(r"│\s*\d+\s*│\s*([\d,]+)\s*│\s*([\d,]+)\s*│", done.stderr)
    if done.returncode or not match:
        sys.exit(f"ehr import failed: {done.stderr[-1000:]}")
    return wall, float(match.group(2).replace(",", "")), int(match.group(1).replace(",", ""))


def run_op(dsn: str, folder: Path, work: Path, workers: int) -> tuple[float, int, int]:
    """(seconds from kick-off to completion, resources loaded, lines in error) of one $import."""
    asyncio.run(fresh(dsn))
    data_dir = work / f"import-data-{time.monotonic_ns()}"
    data_dir.mkdir()
    (data_dir / "bulk-import").symlink_to(folder.resolve())
    proc, base, headers, _ = serve(dsn, data_dir, workers)
    try:
        parts = [
            {
                "name": "input",
                "part": [{"name": "type", "valueCode": p.name.split("-")[0]}, {"name": "url", "valueUri": p.name}],
            }
            for p in sorted(folder.glob("*.ndjson"))
        ]
        body = {"resourceType": "Parameters", "parameter": parts}
        kick = httpx.post(f"{base}/$import", json=body, headers={**headers, **ASYNC}, timeout=60)
        if kick.status_code != 202:
            sys.exit(f"$import kick-off failed: {kick.status_code} {kick.text[:500]}")
        status_url = kick.headers["Content-Location"]
        while (res := httpx.get(status_url, headers=headers, timeout=60)).status_code != 200:
            if res.status_code not in (202, 429):
                sys.exit(f"$import status failed: {res.status_code} {res.text[:500]}")
            time.sleep(float(res.headers.get("Retry-After", "1")))
        manifest = res.json()
    finally:
        stop(proc)
    seconds = asyncio.run(_job_seconds(dsn, status_url.rsplit("=", 1)[1]))
    loaded = sum(o["count"] for o in manifest["output"])
    return seconds, loaded, sum(e["count"] for e in manifest["error"])


async def _job_seconds(dsn: str, job_id: str) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        return float(
            await conn.fetchval(
                "SELECT extract(epoch FROM finished_at - created_at) FROM bulk_import_job WHERE id = $1::uuid", job_id
            )
        )
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/ehr_import_op_bench")
    parser.add_argument("--source-url", default="postgresql://postgres@127.0.0.1:5432/ehr_import_op_bench_source")
    parser.add_argument("--no-load", action="store_true", help="--source-url already holds the Synthea set")
    parser.add_argument("--ndjson", type=Path, help="a folder of NDJSON files to load instead of Synthea's")
    parser.add_argument("--part-mb", type=int, default=4, help="export file size for the Synthea NDJSON")
    parser.add_argument("--runs", type=int, default=3, help="runs of each loader (the median is reported)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="`ehr import --processes`")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="`ehr serve --workers`")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="ehr-import-op-bench-") as tmp:
        work = Path(tmp)
        folder = args.ndjson or make_ndjson(args.source_url, work, args.part_mb, not args.no_load)
        files = sorted(folder.glob("*.ndjson"))
        size = sum(p.stat().st_size for p in files)
        print(f"{len(files)} NDJSON files, {size / 1e6:,.1f} MB", file=sys.stderr)
        cli, op = [], []
        for i in range(args.runs):
            cli.append(run_cli(args.database_url, folder, args.processes))
            print(f"run {i + 1}: ehr import {cli[-1][2]:,} resources in {cli[-1][0]:.1f} s (wall)", file=sys.stderr)
            op.append(run_op(args.database_url, folder, work, args.workers))
            print(f"run {i + 1}: $import {op[-1][1]:,} resources in {op[-1][0]:.1f} s", file=sys.stderr)
    report(args, started, len(files), size, cli, op)
    return 0


def report(args, started, files, size, cli, op) -> None:
    """Each run pairs one `ehr import` with the `$import` right after it (the shared machine's
    speed drifts from minute to minute): the ratio reported is the median of the pairs'."""
    resources = op[0][1]
    cli_s = statistics.median(r[0] for r in cli)
    cli_work = [r[2] / r[1] if r[1] else r[0] for r in cli]  # the time its workers reported, start-up left out
    op_s = statistics.median(r[0] for r in op)
    ratio = statistics.median(o[0] / c[0] for c, o in zip(cli, op, strict=True))
    ratio_work = statistics.median(o[0] / w for w, o in zip(cli_work, op, strict=True))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    runs = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC: import (`python bench/import_op.py`), commit {commit}",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, CPython {platform.python_version()}; the machine's"
        f" PostgreSQL; {files} NDJSON files, {size / 1e6:,.1f} MB; `ehr import --processes {args.processes}` against"
        f" `ehr serve --workers {args.workers}` (auth and audit on), each on a fresh database, alternately."
        f" Target: `$import` time ≤ {TARGET}x `ehr import`'s.",
        "",
        "| what | figure |",
        "|---|---:|",
        f"| resources | {resources:,} (lines in error: {op[0][2]:,}) |",
        f"| `ehr import` wall time, start-up included (runs: {runs(r[0] for r in cli)} s) | {cli_s:.1f} s |",
        f"| `ehr import` time as it reports it, start-up left out (runs: {runs(cli_work)} s) |"
        f" {statistics.median(cli_work):.1f} s |",
        f"| `$import` kick-off to completion (runs: {runs(r[0] for r in op)} s) | {op_s:.1f} s |",
        f"| resources/s: `ehr import` wall / `$import` | {resources / cli_s:,.0f} / {resources / op_s:,.0f} |",
        f"| **`$import` time / `ehr import` wall time**, median of the {len(op)} runs' ratios | **{ratio:.2f}x** |",
        f"| `$import` time / `ehr import` reported time, median of the runs' ratios | {ratio_work:.2f}x |",
    ]
    section = "\n".join(lines)
    print(section)
    rates = f"{resources / cli_s:,.0f} | {resources / op_s:,.0f}"
    summary = f"| {started:%Y-%m-%d %H:%M} | {commit} | {resources:,} | {rates} | {ratio:.2f}x ({ratio_work:.2f}x) |"
    if not args.no_record:
        results.record("import-op", section, summary)


if __name__ == "__main__":
    sys.exit(main())
