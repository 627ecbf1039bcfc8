"""`ehr serve` as a real process: embedded PostgreSQL, restarts, clean shutdown."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An `ehr serve` child process on a free port.

    Requests need tokens: `headers()` holds a system token from `ehr token`. Unless
    admin_from_env is False, the server's admin client comes from EHR_ADMIN_CLIENT_ID/SECRET
    (a database other servers started on already has an admin client, and then no
    admin-client.json is written); otherwise `ehr token` reads the data dir's file.
    """

    def __init__(self, env: dict[str, str], *args: str, admin_from_env: bool = True):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        # a data dir of its own unless given one; removed when the Server is (even if killed)
        self._own_dir = tempfile.TemporaryDirectory(prefix="ehr-serve-") if "--data-dir" not in args else None
        if self._own_dir is not None:
            args = (*args, "--data-dir", self._own_dir.name)
        self.data_dir = Path(args[args.index("--data-dir") + 1])
        self.env = dict(env)
        if admin_from_env and "EHR_ADMIN_CLIENT_ID" not in self.env:
            self.env["EHR_ADMIN_CLIENT_ID"] = f"e2e-admin-{uuid.uuid4().hex[:8]}"
            self.env["EHR_ADMIN_CLIENT_SECRET"] = secrets.token_urlsafe(24)
        self._token: tuple[str, float] | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "headless_ehr.cli", "serve", "--port", str(self.port), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def ehr_token(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`ehr token` for this server, as a user would run it."""
        command = ["token", "--data-dir", str(self.data_dir), "--url", self.base, *args]
        argv = [sys.executable, "-m", "headless_ehr.cli", *command]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)

    def token(self) -> str:
        """A system access token (fetched again when older than two minutes; they live five)."""
        if self._token is None or time.monotonic() - self._token[1] > 120:
            done = self.ehr_token()
            assert done.returncode == 0, done.stderr
            self._token = (done.stdout.strip(), time.monotonic())
        return self._token[0]

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}", **extra}

    def wait_ready(self, timeout: float = 60) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.proc.stdout.read()}")
            try:
                if httpx.get(f"{self.base}/metadata", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not answer in time")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        finally:
            if self._own_dir is not None:
                self._own_dir.cleanup()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    env.update(extra)
    return env


def test_embedded_server_keeps_data_across_restarts_and_stops_postgres(tmp_path: Path):
    data_dir = tmp_path / "data"
    # a newcomer's server: its admin client is written to the data dir, where `ehr token` finds it
    server = Server(_env(), "--data-dir", str(data_dir), admin_from_env=False)
    try:
        server.wait_ready()
        assert (data_dir / "admin-client.json").is_file()
        created = httpx.post(
            f"{server.base}/Patient",
            json={"resourceType": "Patient", "gender": "female"},
            headers=server.headers(**{"Content-Type": "application/fhir+json"}),
        )
        assert created.status_code == 201
        rid = created.json()["id"]
    finally:
        code = server.stop()
    assert code == 0
    assert not (data_dir / "pg" / "postmaster.pid").exists(), "PostgreSQL was left running"

    again = Server(_env(), "--data-dir", str(data_dir), admin_from_env=False)
    try:
        again.wait_ready()
        res = httpx.get(f"{again.base}/Patient/{rid}", headers=again.headers())
        assert res.status_code == 200
        assert res.json()["gender"] == "female"
    finally:
        assert again.stop() == 0


def test_server_uses_external_database_url(database_url: str):
    server = Server(_env(EHR_DATABASE_URL=database_url))
    try:
        server.wait_ready()
        res = httpx.get(f"{server.base}/metadata")
        assert res.json()["resourceType"] == "CapabilityStatement"
        assert httpx.get(f"{server.base}/Patient").status_code == 401  # every other request needs a token
        assert httpx.get(f"{server.base}/Patient", headers=server.headers()).status_code == 200
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("workers", [2])
def test_several_workers_share_one_database(database_url: str, workers: int):
    server = Server(_env(EHR_DATABASE_URL=database_url), "--workers", str(workers))
    try:
        server.wait_ready()
        ids = []
        with httpx.Client(headers=server.headers()) as client:
            for _ in range(6):
                res = client.post(f"{server.base}/Basic", json={"resourceType": "Basic", "code": {"text": "w"}})
                assert res.status_code == 201
                ids.append(res.json()["id"])
            for rid in ids:
                assert client.get(f"{server.base}/Basic/{rid}").status_code == 200
    finally:
        assert server.stop() == 0
