"""The embedded PostgreSQL runs with the settings fitted to its job (db/embedded.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from headless_ehr.db.embedded import SERVER_SETTINGS, EmbeddedPostgres


def test_the_embedded_cluster_runs_with_its_server_settings_and_durable_commits(tmp_path: Path):
    embedded = EmbeddedPostgres(tmp_path / "data")
    dsn = embedded.start()
    try:

        async def show() -> dict[str, str]:
            conn = await asyncpg.connect(dsn)
            try:
                names = [*SERVER_SETTINGS, "synchronous_commit"]
                return {name: await conn.fetchval(f"SHOW {name}") for name in names}
            finally:
                await conn.close()

        shown = asyncio.run(show())
    finally:
        embedded.stop()
    assert shown.pop("synchronous_commit") == "on"  # the API's commits stay durable
    if shown["wal_compression"] == "pglz":  # PostgreSQL 15+ names the method "on" stands for
        shown["wal_compression"] = "on"
    assert shown == SERVER_SETTINGS
    assert SERVER_SETTINGS["wal_level"] == "minimal" and SERVER_SETTINGS["max_wal_size"] == "256MB"
