"""The first admin client: made on first start, written to <data dir>/admin-client.json (mode 600),
or taken from EHR_ADMIN_CLIENT_ID/SECRET; a second node on the same database makes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from headless_ehr.app import create_app
from headless_ehr.auth.secrets import digest
from headless_ehr.config import Settings


@contextlib.asynccontextmanager
async def started(database_url: str, data_dir: Path, **changes: Any) -> AsyncIterator[Any]:
    app = create_app(Settings(database_url=database_url, data_dir=data_dir, **changes))
    async with app.router.lifespan_context(app):
        yield app


async def _admin_rows(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch("SELECT client_id, secret_hash, scopes, enabled FROM auth_client WHERE admin")
    finally:
        await conn.close()


async def test_first_start_writes_the_admin_client_file_with_mode_600(fresh_database, tmp_path):
    async with started(fresh_database, tmp_path):
        pass
    path = tmp_path / "admin-client.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    credentials = orjson.loads(path.read_bytes())
    assert set(credentials) == {"client_id", "client_secret"}
    (row,) = await _admin_rows(fresh_database)
    assert row["client_id"] == credentials["client_id"] and row["enabled"]
    assert row["secret_hash"] == digest(credentials["client_secret"])  # only the digest is stored
    assert "system/*.*" in row["scopes"] and "system/*.cruds" in row["scopes"]


async def test_the_data_dir_is_created_when_missing(fresh_database, tmp_path):
    data_dir = tmp_path / "not" / "there"
    async with started(fresh_database, data_dir):
        pass
    assert (data_dir / "admin-client.json").is_file()


async def test_the_log_says_where_the_credentials_are(fresh_database, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="headless_ehr.auth"):
        async with started(fresh_database, tmp_path):
            pass
    assert str((tmp_path / "admin-client.json").absolute()) in caplog.text


async def test_a_restart_creates_nothing_and_leaves_the_file_alone(fresh_database, tmp_path):
    async with started(fresh_database, tmp_path):
        pass
    first = (tmp_path / "admin-client.json").read_bytes()
    async with started(fresh_database, tmp_path):
        pass
    assert (tmp_path / "admin-client.json").read_bytes() == first
    assert len(await _admin_rows(fresh_database)) == 1


async def test_a_second_node_with_its_own_data_dir_creates_nothing(fresh_database, tmp_path):
    async with started(fresh_database, tmp_path / "one"):
        pass
    async with started(fresh_database, tmp_path / "two"):
        pass
    assert not (tmp_path / "two" / "admin-client.json").exists()
    assert len(await _admin_rows(fresh_database)) == 1


async def test_two_nodes_starting_at_once_create_one_admin_client(fresh_database, tmp_path):
    async def node(name: str) -> None:
        async with started(fresh_database, tmp_path / name):
            pass

    await asyncio.gather(node("a"), node("b"))
    written = [p for p in (tmp_path / "a", tmp_path / "b") if (p / "admin-client.json").exists()]
    assert len(written) == 1
    (row,) = await _admin_rows(fresh_database)
    assert orjson.loads((written[0] / "admin-client.json").read_bytes())["client_id"] == row["client_id"]


async def test_the_environment_names_the_admin_client_and_no_file_is_written(fresh_database, tmp_path):
    secret = "s3cret-from-the-environment"
    async with started(fresh_database, tmp_path, admin_client_id="ops-admin", admin_client_secret=secret):
        pass
    assert not (tmp_path / "admin-client.json").exists()
    (row,) = await _admin_rows(fresh_database)
    assert row["client_id"] == "ops-admin" and row["secret_hash"] == digest(secret)


async def test_a_new_secret_in_the_environment_replaces_the_old_one(fresh_database, tmp_path):
    names = {"admin_client_id": "ops-admin"}
    async with started(fresh_database, tmp_path, admin_client_secret="the-first-secret-0001", **names):
        pass
    async with started(fresh_database, tmp_path, admin_client_secret="the-second-secret-002", **names):
        pass
    (row,) = await _admin_rows(fresh_database)
    assert row["secret_hash"] == digest("the-second-secret-002")


def test_the_admin_client_variables_go_together(monkeypatch):
    monkeypatch.setenv("EHR_ADMIN_CLIENT_ID", "ops-admin")
    monkeypatch.delenv("EHR_ADMIN_CLIENT_SECRET", raising=False)
    with pytest.raises(ValueError, match="together"):
        Settings.from_env()


def test_a_short_admin_client_secret_stops_start_up(monkeypatch):
    monkeypatch.setenv("EHR_ADMIN_CLIENT_ID", "ops-admin")
    monkeypatch.setenv("EHR_ADMIN_CLIENT_SECRET", "short")
    with pytest.raises(ValueError, match="at least 16"):
        Settings.from_env()


def test_the_admin_client_secret_is_not_in_the_settings_repr():
    settings = Settings(admin_client_id="ops-admin", admin_client_secret="s3cret-from-the-environment")
    assert "s3cret" not in repr(settings)


async def test_when_the_file_cannot_be_written_no_admin_client_is_stored(fresh_database, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(OSError):
        async with started(fresh_database, blocked):
            pass
    assert await _admin_rows(fresh_database) == []  # the next start tries again
    async with started(fresh_database, tmp_path / "data"):
        pass
    assert len(await _admin_rows(fresh_database)) == 1


def test_a_malformed_admin_client_id_stops_start_up(monkeypatch):
    monkeypatch.setenv("EHR_ADMIN_CLIENT_ID", "has space:colon")
    monkeypatch.setenv("EHR_ADMIN_CLIENT_SECRET", "s3cret-from-the-environment")
    with pytest.raises(ValueError, match="EHR_ADMIN_CLIENT_ID"):
        Settings.from_env()
