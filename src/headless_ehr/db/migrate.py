"""Numbered SQL migrations applied at start-up.

Files `db/migrations/NNNN_name.sql` run in order, each in its own transaction,
under a session advisory lock so that several nodes starting at once apply each
migration exactly once.
"""

from __future__ import annotations

import re
from importlib import resources

import asyncpg

# Any constant shared by every node; "ehr-migrate" as an integer.
MIGRATION_LOCK_KEY = 0x6568722D6D696772
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migration_files() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every shipped migration, in order."""
    folder = resources.files("headless_ehr.db").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply every pending migration; returns the names applied."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migration ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migration")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migration (version, name) VALUES ($1, $2)", version, name)
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now
