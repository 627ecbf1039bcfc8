"""The embedded PostgreSQL's security: password authentication on a private socket, least permissions."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from headless_ehr.db.embedded import PASSWORD_FILE, SOCKET_PORT, EmbeddedPostgres, trust_lines

AS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[EmbeddedPostgres, str]]:
    """One cluster in a folder whose name has a space (pg_ctl -o must quote it)."""
    folder = Path(tempfile.mkdtemp(prefix="ehr embedded "))
    embedded = EmbeddedPostgres(folder / "data dir")
    try:
        yield embedded, embedded.start()
    finally:
        embedded.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_pg_hba_has_no_trust_lines(cluster):
    embedded, _ = cluster
    hba = (embedded.pgdata / "pg_hba.conf").read_text()
    assert trust_lines(hba) == []
    assert "scram-sha-256" in hba


def test_the_socket_is_in_a_private_folder(cluster):
    embedded, _ = cluster
    assert (embedded.socket_dir / f".s.PGSQL.{SOCKET_PORT}").exists()
    assert _mode(embedded.socket_dir) == 0o700


def test_the_password_file_is_readable_by_its_owner_only(cluster):
    embedded, _ = cluster
    assert _mode(embedded.data_dir / PASSWORD_FILE) == 0o600


async def test_the_dsn_carries_the_password_and_connects(cluster):
    _, dsn = cluster
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT current_user") == "postgres"
    finally:
        await conn.close()


async def test_a_connection_without_the_password_is_refused(cluster):
    embedded, _ = cluster
    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
        await asyncpg.connect(host=str(embedded.socket_dir), port=SOCKET_PORT, user="postgres", database="ehr")


async def test_a_connection_with_a_wrong_password_is_refused(cluster):
    embedded, _ = cluster
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host=str(embedded.socket_dir), port=SOCKET_PORT, user="postgres", password="guess", database="ehr"
        )


@pytest.mark.skipif(not AS_ROOT, reason="only a root run hands the cluster to another user")
def test_as_root_parents_get_search_but_not_read_permission(cluster):
    embedded, _ = cluster
    holder = embedded.data_dir.parent  # made by mkdtemp with mode 700
    assert _mode(holder) & 0o007 == 0o001


async def test_a_trust_cluster_is_switched_to_passwords_on_its_next_start():
    folder = Path(tempfile.mkdtemp(prefix="ehr-legacy-"))
    try:
        embedded = EmbeddedPostgres(folder / "data")
        embedded.start()
        embedded.stop()
        # what an older version left behind: trust in pg_hba.conf and no password file
        hba = embedded.pgdata / "pg_hba.conf"
        hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
        (embedded.data_dir / PASSWORD_FILE).unlink()
        again = EmbeddedPostgres(folder / "data")
        dsn = again.start()
        try:
            assert trust_lines(hba.read_text()) == []
            conn = await asyncpg.connect(dsn)
            await conn.close()
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(host=str(again.socket_dir), port=SOCKET_PORT, user="postgres", database="ehr")
        finally:
            again.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_long_data_dir_gets_a_private_socket_folder_with_a_stable_name():
    folder = Path(tempfile.mkdtemp(prefix="ehr-long-"))
    try:
        data_dir = folder / ("d" * 120)
        first, second = EmbeddedPostgres(data_dir), EmbeddedPostgres(data_dir)
        assert first.socket_dir == second.socket_dir != first.pgdata
        first._prepare_dirs()
        assert _mode(first.socket_dir) == 0o700
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(EmbeddedPostgres(folder / ("d" * 120)).socket_dir, ignore_errors=True)
