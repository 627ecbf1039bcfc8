"""EHR_AUTH=off: no tokens, and so a loopback listen address only.

This is the one test that turns authorisation off (the issue's rule); it starts the
real `ehr serve` as a process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from .oauth_support import free_port


def _serve(host: str, port: int, database_url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "EHR_AUTH": "off", "EHR_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "headless_ehr.cli", "serve", "--host", host, "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(url: str, process: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ehr serve exited with {process.returncode}: {process.stderr.read()}")  # type: ignore[union-attr]
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail(f"ehr serve did not answer at {url} within {seconds} s")


async def test_auth_off_is_refused_off_loopback_and_serves_without_a_token_on_loopback(fresh_database):
    refused = _serve("0.0.0.0", free_port(), fresh_database)
    _, stderr = refused.communicate(timeout=60)
    assert refused.returncode != 0
    assert "EHR_AUTH=off" in stderr and "loopback" in stderr and "Traceback" not in stderr

    port = free_port()
    server = _serve("127.0.0.1", port, fresh_database)
    try:
        _wait_for(f"http://127.0.0.1:{port}/fhir/metadata", server)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/fhir", timeout=30) as http:
            response = await http.get("/Patient")  # no Authorization header
            assert response.status_code == 200, response.text
            assert response.json()["resourceType"] == "Bundle"
            statement = (await http.get("/metadata")).json()
        assert "EHR_AUTH=off" in statement["description"]
    finally:
        server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=60)
    assert "EHR_AUTH=off" in log  # the warning at start
