"""$export throughput and memory: system exports of the Synthea set from a real `ehr serve`.

    python bench/export.py                       # load Synthea, 3 timed exports, then exports until 1 GB
    python bench/export.py --no-load --runs 1 --until-mb 0 --no-record

Loads every Synthea Bundle of ../shared/fhir/synthea (the 2 information Bundles first,
then the patients) with `ehr import` into a fresh database on the machine's PostgreSQL,
starts `ehr serve --workers 1` on it, and then:
- throughput: `--runs` system-level exports of every type (kick-off, poll, manifest);
  each run's time is the job's own, from kick-off to completion as the database recorded
  it (created_at to finished_at), so polling granularity does not count; resources/s and
  MB/s of NDJSON written;
- memory: exports repeated (each deleted once complete) until their output passes
  `--until-mb` (1024 by default, the issue's 1 GB), while the server's resident memory
  (RSS of its process tree, psutil) is sampled every 100 ms; the peak is reported with
  the RSS before the first export.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import psutil
import results
from crud import access_token, bench_admin_client, server_env
from ingest import free_port, until_serving

from search import recreate_database

SYNTHEA = Path(__file__).resolve().parents[1].parent / "shared" / "fhir" / "synthea"
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
TARGET = 20_000  # resources/s on the 2-core development machine (issue 13)


def load(dsn: str, work: Path) -> None:
    """Every Synthea Bundle into a fresh database: the information Bundles in a run of their own first."""
    asyncio.run(recreate_database(dsn))
    env = {**os.environ, "EHR_DATABASE_URL": dsn, "COLUMNS": "160"}
    first = sorted(SYNTHEA.glob("*Information*.json"))
    rest = work / "patients"
    rest.mkdir()
    for path in [*sorted(SYNTHEA.glob("*.json")), *sorted((SYNTHEA / "smart-r4").glob("*.json.gz"))]:
        if path not in first:
            (rest / path.name).symlink_to(path)
    for what in ([str(p) for p in first], [str(rest)]):
        done = subprocess.run(["ehr", "import", *what], env=env, capture_output=True, text=True)
        print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:], file=sys.stderr)


def serve(
    dsn: str, data_dir: Path, workers: int = 1, extra: dict[str, str] | None = None, stderr: int | None = None
) -> tuple[subprocess.Popen[bytes], str, dict[str, str], dict[str, str]]:
    """A started `ehr serve` with auth on and its data dir: the process, base URL, admin headers, env."""
    port = free_port()
    env = {**os.environ, "EHR_DATABASE_URL": dsn, **(extra or {})}
    bench_admin_client(env)
    env = server_env(env, "on")
    cmd = ["ehr", "serve", "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    proc = subprocess.Popen([*cmd, "--data-dir", str(data_dir)], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}/fhir"
    until_serving(proc, base, seconds=90)
    return proc, base, {"Authorization": f"Bearer {access_token(env, port)}"}, env


def rss(pid: int) -> int:
    """Resident bytes of the process and its children."""
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


class Sampler(threading.Thread):
    """The peak RSS of a process tree, sampled every 100 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.1)


def export_once(base: str, headers: dict[str, str]) -> str:
    """Kick off a system export of every type and wait for its manifest; the job id."""
    kick = httpx.post(f"{base}/$export", json={"resourceType": "Parameters"}, headers={**headers, **ASYNC})
    if kick.status_code != 202:
        sys.exit(f"kick-off failed: {kick.status_code} {kick.text[:500]}")
    status_url = kick.headers["Content-Location"]
    while True:
        res = httpx.get(status_url, headers=headers, timeout=30)
        if res.status_code == 200:
            return status_url.rsplit("=", 1)[1]
        if res.status_code not in (202, 429):
            sys.exit(f"status failed: {res.status_code} {res.text[:500]}")
        time.sleep(float(res.headers.get("Retry-After", "1")))


async def job_figures(dsn: str, job_id: str) -> tuple[float, int, int]:
    """(seconds from kick-off to completion, resources, bytes) of a finished job."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT extract(epoch FROM finished_at - created_at),"
            " (SELECT coalesce(sum(count), 0) FROM bulk_export_file f WHERE f.job_id = j.id),"
            " (SELECT coalesce(sum(bytes), 0) FROM bulk_export_file f WHERE f.job_id = j.id)"
            " FROM bulk_export_job j WHERE id = $1::uuid",
            job_id,
        )
        return float(row[0]), int(row[1]), int(row[2])
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/ehr_export_bench")
    parser.add_argument("--no-load", action="store_true", help="export what the database already holds")
    parser.add_argument("--runs", type=int, default=3, help="timed exports (the median is reported)")
    parser.add_argument("--until-mb", type=int, default=1024, help="memory test: export until this much output")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="ehr-export-bench-") as tmp:
        work = Path(tmp)
        if not args.no_load:
            load(args.database_url, work)
        proc, base, headers, _ = serve(args.database_url, work / "data", stderr=subprocess.DEVNULL)
        try:
            runs = []
            for i in range(args.runs):
                job = export_once(base, headers)
                runs.append(asyncio.run(job_figures(args.database_url, job)))
                httpx.delete(f"{base}/$export-poll-status?_jobId={job}", headers=headers)
                s, n, b = runs[-1]
                print(f"run {i + 1}: {n:,} resources, {b / 1e6:,.1f} MB in {s:.2f} s", file=sys.stderr)
            baseline = rss(proc.pid)
            sampler = Sampler(proc.pid)
            sampler.start()
            written = exports = 0
            t0 = time.perf_counter()
            while written < args.until_mb * 1024 * 1024:
                job = export_once(base, headers)
                written += asyncio.run(job_figures(args.database_url, job))[2]
                exports += 1
                httpx.delete(f"{base}/$export-poll-status?_jobId={job}", headers=headers)
            memory_s = time.perf_counter() - t0
            sampler.done.set()
            sampler.join()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    report(args, started, runs, baseline, sampler.peak, written, exports, memory_s)
    return 0


def report(
    args: argparse.Namespace,
    started: datetime,
    runs: list[tuple[float, int, int]],
    baseline: int,
    peak: int,
    written: int,
    exports: int,
    memory_s: float,
) -> None:
    ordered = sorted(runs, key=lambda r: r[1] / r[0] if r[0] else 0)
    s, n, b = ordered[len(ordered) // 2] if ordered else (0.0, 0, 0)
    rate, mbps = (n / s, b / 1e6 / s) if s else (0.0, 0.0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    mib = 1024 * 1024
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC: export (`python bench/export.py`), commit {commit}",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, CPython {platform.python_version()}; the machine's"
        " PostgreSQL; `ehr serve --workers 1`, auth and audit on. System-level `$export` of every type of the"
        f" Synthea set. Target: ≥ {TARGET:,} resources/s.",
        "",
        "| what | figure |",
        "|---|---:|",
        f"| resources per export | {n:,} |",
        f"| NDJSON per export | {b / 1e6:,.1f} MB |",
        f"| export time, median of {len(runs)} (runs: {', '.join(f'{r[0]:.2f}' for r in runs)} s) | {s:.2f} s |",
        f"| **resources/s** | **{rate:,.0f}** |",
        f"| MB/s | {mbps:,.1f} |",
        f"| memory test: exports until {args.until_mb:,} MiB written | {exports} exports, {written / mib:,.0f} MiB"
        f" in {memory_s:.0f} s |",
        f"| server RSS before / peak during the memory test | {baseline / mib:,.0f} / {peak / mib:,.0f} MiB |",
    ]
    section = "\n".join(lines)
    print(section)
    summary = (
        f"| {started:%Y-%m-%d %H:%M} | {commit} | {n:,} | {rate:,.0f} | {mbps:,.1f} | {peak / mib:,.0f} MiB"
        f" ({written / mib:,.0f} MiB written) |"
    )
    if not args.no_record:
        results.record("export", section, summary)


if __name__ == "__main__":
    sys.exit(main())
