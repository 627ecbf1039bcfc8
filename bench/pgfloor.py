"""The PostgreSQL floor: what asyncpg alone does against the server's own PostgreSQL.

Each client is one autocommit asyncpg connection running one statement per
operation on a table with a text primary key and a bytea row of the Patient's size:
create = INSERT, read = SELECT by primary key, update = UPDATE by primary key.

    python bench/pgfloor.py --dsn DSN --case read --clients 8 --duration 10 \
        --body create.json --ids pg-ids.txt

prints one JSON line (a LoadResult). `prepare` and `drop` set the table up and remove it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import uuid
from dataclasses import asdict
from pathlib import Path

import asyncpg
from loadgen import LoadResult, drive, run

TABLE = "bench_floor"
STATEMENTS = {
    "create": f"INSERT INTO {TABLE} (id, content) VALUES ($1, $2)",
    "read": f"SELECT content FROM {TABLE} WHERE id = $1",
    "update": f"UPDATE {TABLE} SET content = $2 WHERE id = $1",
}


async def prepare(dsn: str, body: bytes, n: int) -> list[str]:
    """(Re)create the table with n rows and return their ids."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.execute(f"CREATE TABLE {TABLE} (id text PRIMARY KEY, content bytea NOT NULL)")
        ids = [str(uuid.uuid4()) for _ in range(n)]
        await conn.copy_records_to_table(TABLE, records=[(i, body) for i in ids])
        await conn.execute(f"VACUUM ANALYZE {TABLE}")
        return ids
    finally:
        await conn.close()


async def drop(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    finally:
        await conn.close()


async def server_info(dsn: str) -> tuple[str, int]:
    """(server_version, postmaster pid) of the PostgreSQL behind dsn (pid 0 if not local)."""
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        return version, _parent_pid(backend)  # the postmaster forks every backend
    finally:
        await conn.close()


def _parent_pid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError):
        return 0


async def pg_load(dsn: str, case: str, clients: int, duration: float, body: bytes, ids: list[str]) -> LoadResult:
    statement = STATEMENTS[case]

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(dsn)

    async def op(conn: asyncpg.Connection) -> str | None:
        if case == "create":
            await conn.execute(statement, str(uuid.uuid4()), body)
        elif case == "read":
            if await conn.fetchval(statement, random.choice(ids)) is None:
                return "not-found"
        elif await conn.execute(statement, random.choice(ids), body) != "UPDATE 1":
            return "not-found"
        return None

    async def close(conn: asyncpg.Connection) -> None:
        await conn.close()

    return await drive(clients, duration, connect, op, close)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dsn", required=True)
    p.add_argument("--case", choices=sorted(STATEMENTS), required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--body", type=Path, required=True)
    p.add_argument("--ids", type=Path, required=True)
    args = p.parse_args(argv)
    body, ids = args.body.read_bytes(), args.ids.read_text().split()
    result = run(pg_load(args.dsn, args.case, args.clients, args.duration, body, ids))
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
