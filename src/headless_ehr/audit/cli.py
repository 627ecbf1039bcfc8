"""`ehr audit verify` and `ehr audit export`: the chain checked, the events out for a SIEM."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import IO

import asyncpg

from .chain import verify


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


async def _verify(dsn: str) -> int:
    conn = await _connect(dsn)
    try:
        result = await verify(conn)
    finally:
        await conn.close()
    if result.broken is not None:
        print(f"ehr audit verify: chain broken after {result.count} good records: {result.broken}", file=sys.stderr)
        return 1
    print(f"audit chain intact: {result.count} records, head {result.head.hex()}")
    return 0


def run_verify(dsn: str) -> int:
    return asyncio.run(_verify(dsn))


async def _export(dsn: str, since: datetime | None, out: IO[bytes]) -> int:
    conn = await _connect(dsn)
    count = 0
    try:
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            query, args = "SELECT content FROM audit_event ORDER BY seq", []
            if since is not None:
                query, args = "SELECT content FROM audit_event WHERE recorded >= $1 ORDER BY seq", [since]
            async for row in conn.cursor(query, *args):
                out.write(bytes(row["content"]) + b"\n")
                count += 1
    finally:
        await conn.close()
    out.flush()
    print(f"exported {count} AuditEvents", file=sys.stderr)
    return 0


def run_export(dsn: str, since: datetime | None, out: IO[bytes]) -> int:
    return asyncio.run(_export(dsn, since, out))


def parse_since(text: str) -> datetime:
    """An ISO 8601 instant or date; without a zone it is UTC."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)
