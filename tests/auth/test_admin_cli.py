"""`ehr client create`, `ehr user create` (against the database) and `ehr token` (against a real `ehr serve`)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from joserfc.jwk import ECKey

from headless_ehr.auth import accounts
from headless_ehr.auth.secrets import digest
from headless_ehr.cli import main
from headless_ehr.db.migrate import migrate
from tests.e2e.test_serve import Server, _env, free_port


@pytest.fixture
def on_database(fresh_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The commands' environment: an external database, a data dir of the test's own."""
    monkeypatch.setenv("EHR_DATABASE_URL", fresh_database)
    monkeypatch.setenv("EHR_DATA_DIR", str(tmp_path))
    return fresh_database


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else {}), out.err


async def _row(database_url: str, sql: str, *args: object) -> asyncpg.Record | None:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchrow(sql, *args)
    finally:
        await conn.close()


async def _policy(database_url: str, name: str) -> None:
    """An (empty) access policy of the name, so that the commands may assign it."""
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        document = json.dumps({"name": name, "rules": []})
        await conn.execute("INSERT INTO auth_policy VALUES ($1, 1, $2::jsonb, 'test')", name, document)
    finally:
        await conn.close()


async def _login(database_url: str, username: str, password: str) -> bool:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        return await accounts.authenticate_user(pool, username, password) is not None
    finally:
        await pool.close()


# ---- ehr client create / ehr user create ----------------------------------------------


def test_client_create_prints_the_client_with_its_secret_and_stores_its_digest(on_database, capsys):
    asyncio.run(_policy(on_database, "lab"))
    code, created, err = _run(
        capsys,
        *("client", "create", "--name", "Lab app", "--redirect-uri", "https://lab.example/cb"),
        *("--scope", "user/*.rs openid", "--scope", "fhirUser", "--policy", "lab"),
    )
    assert code == 0, err
    assert created["scopes"] == ["user/*.rs", "openid", "fhirUser"] and created["policies"] == ["lab"]
    assert "not shown again" in err
    sql = "SELECT secret_hash, policies FROM auth_client WHERE client_id = $1"
    row = asyncio.run(_row(on_database, sql, created["client_id"]))
    assert row["secret_hash"] == digest(created["client_secret"]) and row["policies"] == ["lab"]


def test_client_create_with_a_jwks_file_registers_its_public_keys(on_database, capsys, tmp_path):
    jwks = tmp_path / "keys.json"
    jwks.write_text(json.dumps({"keys": [ECKey.generate_key("P-384").as_dict(private=False)]}))
    code, created, err = _run(
        capsys, "client", "create", "--name", "svc", "--scope", "system/*.rs", "--jwks-file", str(jwks)
    )
    assert code == 0, err
    assert created["token_endpoint_auth_method"] == "private_key_jwt" and "client_secret" not in created


def test_client_create_refuses_a_bad_scope_with_a_message(on_database, capsys):
    code, _, err = _run(capsys, "client", "create", "--name", "x", "--scope", "patient/*.bogus")
    assert code == 1 and "bogus" in err and "Traceback" not in err


def test_client_create_refuses_a_missing_jwks_file(on_database, capsys, tmp_path):
    code, _, err = _run(capsys, "client", "create", "--name", "x", "--jwks-file", str(tmp_path / "none.json"))
    assert code == 2 and "none.json" in err


def test_client_create_takes_a_jwks_file_or_a_jwks_uri_not_both(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["client", "create", "--name", "x", "--jwks-file", "a", "--jwks-uri", "https://k.example/j"])
    assert exit_info.value.code == 2


def test_user_create_reads_the_password_from_stdin_and_never_prints_it(on_database, capsys, monkeypatch):
    asyncio.run(_policy(on_database, "ward-3"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse battery\n"))
    code, created, err = _run(
        capsys,
        *("user", "create", "--username", "alice", "--password-stdin", "--fhir-user", "Practitioner/7"),
        *("--role", "nurse", "--patient", "123", "--policy", "ward-3"),
    )
    assert code == 0, err
    assert created == {**created, "username": "alice", "fhir_user": "Practitioner/7", "roles": ["nurse"]}
    assert created["patients"] == ["123"] and created["policies"] == ["ward-3"]
    assert "correct horse" not in json.dumps(created)
    assert asyncio.run(_login(on_database, "alice", "correct horse battery"))


def test_user_create_refuses_a_short_password(on_database, capsys):
    code, _, err = _run(capsys, "user", "create", "--username", "bob", "--password", "short")
    assert code == 1 and "password" in err


def test_user_create_needs_a_password_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["user", "create", "--username", "bob"])
    assert exit_info.value.code == 2


def test_user_create_refuses_an_empty_password_on_stdin(on_database, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = _run(capsys, "user", "create", "--username", "bob", "--password-stdin")
    assert code == 2 and "password" in err


# ---- ehr token ----------------------------------------------------------------------------


def _ehr(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headless_ehr.cli", *argv], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def newcomers_server(fresh_database: str) -> Iterator[Server]:
    """`ehr serve` on an empty database, its admin client written to its data dir."""
    server = Server(_env(EHR_DATABASE_URL=fresh_database), admin_from_env=False)
    try:
        server.wait_ready()
        yield server
    finally:
        assert server.stop() == 0


def test_ehr_token_prints_one_line_that_is_a_working_system_token(newcomers_server):
    done = newcomers_server.ehr_token()
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\n") and done.stdout.count("\n") == 1 and done.stderr == ""
    token = done.stdout.strip()
    assert " " not in token and token.count(".") == 2  # a JWT, and nothing else
    headers = {"Authorization": f"Bearer {token}"}
    created = httpx.post(f"{newcomers_server.base}/Patient", json={"resourceType": "Patient"}, headers=headers)
    assert created.status_code == 201
    origin = newcomers_server.base.removesuffix("/fhir")
    assert httpx.get(f"{origin}/admin/clients", headers=headers).status_code == 200


def test_ehr_token_asks_for_the_scope_given(newcomers_server):
    done = newcomers_server.ehr_token("--scope", "system/Patient.rs")
    assert done.returncode == 0, done.stderr
    headers = {"Authorization": f"Bearer {done.stdout.strip()}"}
    assert httpx.get(f"{newcomers_server.base}/Patient", headers=headers).status_code == 200
    assert httpx.get(f"{newcomers_server.base}/Observation", headers=headers).status_code == 403


def test_the_admin_client_file_is_mode_600_and_holds_only_the_credentials(newcomers_server):
    path = newcomers_server.data_dir / "admin-client.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert set(json.loads(path.read_text())) == {"client_id", "client_secret"}


def test_ehr_token_with_the_environments_admin_client_needs_no_file(database_url, tmp_path):
    server = Server(_env(EHR_DATABASE_URL=database_url))  # EHR_ADMIN_CLIENT_ID/SECRET set
    try:
        server.wait_ready()
        assert not (server.data_dir / "admin-client.json").exists()
        env = {**server.env, "EHR_DATA_DIR": str(tmp_path / "empty")}
        done = _ehr(env, "token", "--url", server.base)
        assert done.returncode == 0, done.stderr
        headers = {"Authorization": f"Bearer {done.stdout.strip()}"}
        assert httpx.get(f"{server.base}/Patient", headers=headers).status_code == 200
    finally:
        assert server.stop() == 0


def test_ehr_token_without_a_server_says_so(tmp_path):
    (tmp_path / "admin-client.json").write_text('{"client_id": "a", "client_secret": "b"}')
    url = f"http://127.0.0.1:{free_port()}/fhir"
    done = _ehr(_env(), "token", "--data-dir", str(tmp_path), "--url", url)
    assert done.returncode == 1 and done.stdout == ""
    assert f"no server answers at {url}" in done.stderr and "Traceback" not in done.stderr


def test_ehr_token_without_admin_client_json_names_the_file(tmp_path):
    done = _ehr(_env(), "token", "--data-dir", str(tmp_path))
    assert done.returncode == 1 and done.stdout == ""
    assert str(tmp_path / "admin-client.json") in done.stderr and "EHR_ADMIN_CLIENT_ID" in done.stderr


def test_ehr_token_with_wrong_credentials_says_the_server_refused_them(newcomers_server, tmp_path):
    (tmp_path / "admin-client.json").write_text('{"client_id": "someone", "client_secret": "wrong"}')
    done = _ehr(
        {**os.environ, **newcomers_server.env}, "token", "--data-dir", str(tmp_path), "--url", newcomers_server.base
    )
    assert done.returncode == 1 and done.stdout == ""
    assert "refused the admin client 'someone'" in done.stderr and "invalid_client" in done.stderr


def test_several_workers_write_one_admin_client_file_into_the_given_data_dir(fresh_database):
    server = Server(_env(EHR_DATABASE_URL=fresh_database), "--workers", "2", admin_from_env=False)
    try:
        server.wait_ready()
        assert (server.data_dir / "admin-client.json").is_file()
        assert httpx.get(f"{server.base}/Patient", headers=server.headers()).status_code == 200
    finally:
        assert server.stop() == 0
    assert server.proc.stdout is not None
    assert server.proc.stdout.read().count("created admin client") == 1
