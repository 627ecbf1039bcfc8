"""`ehr serve` as a real process: embedded PostgreSQL, restarts, clean shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An `ehr serve` child process on a free port."""

    def __init__(self, env: dict[str, str], *args: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "headless_ehr.cli", "serve", "--port", str(self.port), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

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


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    env.update(extra)
    return env


def test_embedded_server_keeps_data_across_restarts_and_stops_postgres(tmp_path: Path):
    data_dir = tmp_path / "data"
    server = Server(_env(), "--data-dir", str(data_dir))
    try:
        server.wait_ready()
        created = httpx.post(
            f"{server.base}/Patient",
            json={"resourceType": "Patient", "gender": "female"},
            headers={"Content-Type": "application/fhir+json"},
        )
        assert created.status_code == 201
        rid = created.json()["id"]
    finally:
        code = server.stop()
    assert code == 0
    assert not (data_dir / "pg" / "postmaster.pid").exists(), "PostgreSQL was left running"

    again = Server(_env(), "--data-dir", str(data_dir))
    try:
        again.wait_ready()
        res = httpx.get(f"{again.base}/Patient/{rid}")
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
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("workers", [2])
def test_several_workers_share_one_database(database_url: str, workers: int):
    server = Server(_env(EHR_DATABASE_URL=database_url), "--workers", str(workers))
    try:
        server.wait_ready()
        ids = []
        with httpx.Client() as client:
            for _ in range(6):
                res = client.post(f"{server.base}/Basic", json={"resourceType": "Basic", "code": {"text": "w"}})
                assert res.status_code == 201
                ids.append(res.json()["id"])
            for rid in ids:
                assert client.get(f"{server.base}/Basic/{rid}").status_code == 200
    finally:
        assert server.stop() == 0
