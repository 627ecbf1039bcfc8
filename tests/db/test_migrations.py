"""Migrations apply once, in order, even when several nodes start together."""

from __future__ import annotations

import asyncio

import asyncpg

from headless_ehr.db.migrate import migrate, migration_files


async def test_migrations_are_recorded_once(db):
    rows = await db.fetch("SELECT version, name FROM schema_migration ORDER BY version")
    assert [(r["version"], r["name"]) for r in rows] == [(v, n) for v, n, _ in migration_files()]


async def test_concurrent_migrate_calls_apply_nothing_twice(database_url):
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert applied == [[]] * 4  # already at the latest version; nobody re-applies


async def test_migrations_on_empty_database_apply_exactly_once(server_dsn):
    import uuid

    from tests.conftest import _with_database

    name = f"ehr_mig_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conns = [await asyncpg.connect(_with_database(server_dsn, name)) for _ in range(3)]
        try:
            applied = await asyncio.gather(*(migrate(c) for c in conns))
        finally:
            for c in conns:
                await c.close()
        flat = [n for names in applied for n in names]
        assert sorted(flat) == sorted(n for _, n, _ in migration_files())
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
