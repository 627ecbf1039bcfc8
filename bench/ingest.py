"""Ingest throughput: Synthea transaction Bundles over HTTP and through `ehr import`.

    python bench/ingest.py                      # 200 Synthea patients, appends to RESULTS.md
    python bench/ingest.py --bundles 40 --no-record

Each mode loads the same Bundles into a fresh database on the machine's PostgreSQL
(validation and search indexing on, as in production):
- http: `POST /fhir` with each Bundle as a transaction, 1 and 4 concurrent clients,
  against a real `ehr serve` (with --auth on, the default, each request carries a system
  token from `ehr token`);
- import: `ehr import FOLDER` (its own rate, and wall time including start-up);
- embedded import: `ehr import --data-dir NEW_FOLDER FOLDER`, the zero-set-up default
  (the embedded PostgreSQL with its own settings, db/embedded.py), and its disk use;
- floor: the same resources' JSON COPYed straight into a bare table, the fastest
  PostgreSQL can take the bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import results
from crud import access_token, bench_admin_client, server_env

from search import recreate_database

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "fhir" / "synthea"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DB = "ehr_ingest_bench"


def bundles(limit: int) -> list[Path]:
    found = sorted((SHARED / "smart-r4").glob("*.json.gz"))[:limit]
    if not found:
        sys.exit(f"no Synthea bundles under {SHARED}")
    return found


async def fresh_database(admin_dsn: str) -> str:
    """An empty database, after a checkpoint: every mode starts with the WAL of the
    one before flushed, instead of paying for its checkpoint part-way through."""
    url = admin_dsn.rsplit("/", 1)[0] + f"/{DB}"
    await recreate_database(url)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return url


def count_entries(paths: list[Path]) -> tuple[list[bytes], int]:
    bodies, total = [], 0
    for path in paths:
        body = gzip.decompress(path.read_bytes())
        bodies.append(body)
        total += body.count(b'"request"')
    return bodies, total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until_serving(proc: subprocess.Popen[bytes], base: str, seconds: float) -> None:
    """Wait for the started `ehr serve` to answer /metadata; exit the bench when it does not in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("ehr serve did not start")


def start_server(dsn: str, workers: int, auth: str) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    """ehr serve on a free port; (process, FHIR base, headers every request sends)."""
    port = free_port()
    env = {**os.environ, "EHR_DATABASE_URL": dsn, "EHR_MAX_BODY_BYTES": str(256 * 1024 * 1024)}
    bench_admin_client(env)  # on an external database the server writes no admin-client.json we could find
    env = server_env(env, auth)
    proc = subprocess.Popen(
        ["ehr", "serve", "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/fhir"
    until_serving(proc, base, seconds=30)
    headers = {"Content-Type": "application/fhir+json"}
    if auth == "on":
        try:
            headers["Authorization"] = f"Bearer {access_token(env, port)}"
        except RuntimeError:
            proc.kill()
            raise
    return proc, base, headers


async def http_mode(dsn: str, bodies: list[bytes], clients: int, workers: int, auth: str) -> tuple[float, int]:
    proc, base, headers = start_server(dsn, workers, auth)
    try:
        queue = list(bodies)
        errors = 0

        async def client() -> None:
            nonlocal errors
            async with httpx.AsyncClient(timeout=300) as http:
                while queue:
                    body = queue.pop()
                    res = await http.post(base, content=body, headers=headers)
                    if res.status_code != 200:
                        errors += 1
                        print(f"  error {res.status_code}: {res.text[:200]}", file=sys.stderr)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - started, errors
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def import_mode(dsn: str, paths: list[Path]) -> tuple[float, float, str]:
    folder = Path(tempfile.mkdtemp(prefix="ehr-ingest-"))
    try:
        for path in paths:
            shutil.copy(path, folder / path.name)
        started = time.perf_counter()
        result = subprocess.run(
            ["ehr", "import", str(folder)],
            env={**os.environ, "EHR_DATABASE_URL": dsn, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    match = re.search(r"│\s*\d+\s*│\s*([\d,]+)\s*│\s*([\d,]+)\s*│", result.stderr)
    reported = float(match.group(2).replace(",", "")) if match else 0.0
    return wall, reported, result.stderr[-400:] if result.returncode else ""


def embedded_import_mode(paths: list[Path]) -> tuple[float, float, str, int, int]:
    """(wall, reported rate, failure, MB in pg_wal at the end, MB of the whole data dir)
    for `ehr import` into a fresh embedded data dir."""
    folder = Path(tempfile.mkdtemp(prefix="ehr-ingest-"))
    data_dir = Path(tempfile.mkdtemp(prefix="ehr-ingest-data-"))
    try:
        for path in paths:
            shutil.copy(path, folder / path.name)
        env = {k: v for k, v in os.environ.items() if k != "EHR_DATABASE_URL"}
        started = time.perf_counter()
        result = subprocess.run(
            ["ehr", "import", "--data-dir", str(data_dir), str(folder)],
            env={**env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
        wal = _megabytes(data_dir / "pg" / "pg_wal")
        total = _megabytes(data_dir)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    match = re.search(r"│\s*\d+\s*│\s*([\d,]+)\s*│\s*([\d,]+)\s*│", result.stderr)
    reported = float(match.group(2).replace(",", "")) if match else 0.0
    return wall, reported, result.stderr[-400:] if result.returncode else "", wal, total


def _megabytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) // 2**20


async def floor_mode(dsn: str, bodies: list[bytes]) -> float:
    import json

    rows = []
    for body in bodies:
        for entry in json.loads(body)["entry"]:
            resource = entry["resource"]
            rows.append((resource["resourceType"], str(len(rows)), json.dumps(resource).encode()))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE bare (resource_type text, id text PRIMARY KEY, content bytea)")
        started = time.perf_counter()
        await conn.copy_records_to_table("bare", records=rows, columns=["resource_type", "id", "content"])
        return time.perf_counter() - started
    finally:
        await conn.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", type=int, default=200, help="Synthea patients to load")
    parser.add_argument("--admin-dsn", default=ADMIN_DSN)
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--workers", type=int, default=2, help="ehr serve worker processes")
    parser.add_argument("--import-runs", type=int, default=3, help="`ehr import` runs; the median is reported")
    parser.add_argument("--embedded-runs", type=int, default=1, help="`ehr import` runs into the embedded default")
    parser.add_argument("--auth", choices=["on", "off"], default="on", help="EHR_AUTH of ehr serve (on: with a token)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    paths = bundles(args.bundles)
    bodies, resources = count_entries(paths)
    print(f"{len(paths)} Bundles, {resources:,} resources")
    lines = []
    http_rates: list[str] = []
    for clients in [int(c) for c in args.clients.split(",")]:
        dsn = await fresh_database(args.admin_dsn)
        seconds, errors = await http_mode(dsn, bodies, clients, args.workers, args.auth)
        lines.append(
            f"| HTTP transactions, {clients} client(s), {args.workers} worker(s), EHR_AUTH={args.auth}"
            f" | {resources / seconds:,.0f} "
            f"| {seconds:.1f} s | {errors} failed Bundles |"
        )
        print(lines[-1], flush=True)
        http_rates.append(f"{resources / seconds:,.0f}")
    runs = []
    for _ in range(max(1, args.import_runs)):
        dsn = await fresh_database(args.admin_dsn)
        runs.append(import_mode(dsn, paths))
    runs.sort(key=lambda run: run[1])
    wall, reported, failure = runs[len(runs) // 2]
    import_rate = reported  # the summary row's figure (the embedded row below reuses the names)
    spread = f" (runs: {', '.join(f'{r[1]:,.0f}' for r in runs)})" if len(runs) > 1 else ""
    failure = next((r[2] for r in runs if r[2]), "")
    lines.append(
        f"| `ehr import`, median of {len(runs)} | {reported:,.0f} (as reported){spread} / {resources / wall:,.0f}"
        f" (wall, with start-up) | {wall:.1f} s | {failure or 'no failures'} |"
    )
    print(lines[-1], flush=True)
    if args.embedded_runs:
        runs_e = sorted((embedded_import_mode(paths) for _ in range(args.embedded_runs)), key=lambda r: r[1])
        wall, reported, failure, wal, total = runs_e[len(runs_e) // 2]
        lines.append(
            f"| `ehr import` into a fresh embedded data dir, median of {len(runs_e)} | {reported:,.0f} (as reported)"
            f" / {resources / wall:,.0f} (wall, with initdb) | {wall:.1f} s | {failure or 'no failures'};"
            f" data dir {total:,} MB, of which pg_wal {wal:,} MB |"
        )
        print(lines[-1], flush=True)
    dsn = await fresh_database(args.admin_dsn)
    seconds = await floor_mode(dsn, bodies)
    lines.append(f"| floor: COPY into a bare table | {resources / seconds:,.0f} | {seconds:.1f} s | |")
    print(lines[-1], flush=True)
    conn = await asyncpg.connect(args.admin_dsn)
    version = await conn.fetchval("SHOW server_version")
    await conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    await conn.close()
    table = "| mode | resources/s | time | notes |\n|---|---:|---:|---|\n" + "\n".join(lines)
    if not args.no_record:
        cells = " | ".join([*http_rates, "-", "-"][:2])
        when = f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
        summary = f"| {when} | {cells} | {import_rate:,.0f} (median of {len(runs)}) | PG {version} |"
        record(table, args.bundles, len(paths), resources, version, summary)
    print(table)
    return 0


def record(table: str, asked: int, bundles_used: int, resources: int, version: str, summary: str) -> None:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    header = (
        f"\n## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: ingest (`python bench/ingest.py --bundles {asked}`)\n\n"
        f"Machine: {os.cpu_count()} cores, {cpu}, {platform.python_implementation()} "
        f"{platform.python_version()}; PostgreSQL {version} (the machine's, 127.0.0.1). "
        f"{bundles_used} Synthea Bundles, {resources:,} resources; validation and search indexing on. "
        "Targets: ≥ 2,000 resources/s over HTTP transactions, ≥ 5,000 resources/s through `ehr import`.\n\n"
    )
    results.record("ingest", header + table, summary)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
