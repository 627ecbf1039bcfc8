"""A real `ehr serve` killed in the middle of an $import: after a restart the input is taken
over after its last committed unit, and every line is loaded exactly once (one version each)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import orjson

from tests.e2e.test_serve import Server, _env

LINES = 10_000


def _parameters(url: str) -> dict:
    parts = [{"name": "type", "valueCode": "Patient"}, {"name": "url", "valueUri": url}]
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
            {"name": "input", "part": parts},
        ],
    }


def _manifest(server: Server, status_url: str, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        res = httpx.get(status_url, headers=server.headers(), timeout=10)
        if res.status_code == 200:
            return res.json()
        assert res.status_code == 202, res.text
        time.sleep(float(res.headers["Retry-After"]))
    raise AssertionError("the import did not complete after the restart")


async def _kill_mid_import(server: Server, database_url: str) -> int:
    """SIGKILL the server once its input has committed some units but not all; the position then."""
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(6000):
            position = await conn.fetchval("SELECT position FROM bulk_import_input")
            if position:
                break
            await asyncio.sleep(0.01)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
        row = await conn.fetchrow("SELECT status, position FROM bulk_import_input")
        assert row["status"] == "pending" and 0 < row["position"] < LINES, f"not killed mid-import: {dict(row)}"
        return row["position"]
    finally:
        await conn.close()


async def _versions(database_url: str, ids: list[str]) -> tuple[int, int]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT id) FROM resource_history"
            " WHERE resource_type = 'Patient' AND id = ANY($1::text[])",
            ids,
        )
        return row[0], row[1]
    finally:
        await conn.close()


def test_an_import_killed_mid_way_completes_after_a_restart_with_each_line_once(fresh_database: str, tmp_path: Path):
    data_dir = tmp_path / "data"
    folder = data_dir / "bulk-import"
    folder.mkdir(parents=True)
    ids = [f"e2e-{uuid.uuid4().hex[:16]}" for _ in range(LINES)]
    lines = (orjson.dumps({"resourceType": "Patient", "id": i, "gender": "female"}) + b"\n" for i in ids)
    (folder / "patients.ndjson").write_bytes(b"".join(lines))
    server = Server(_env(EHR_DATABASE_URL=fresh_database), "--data-dir", str(data_dir))
    server.wait_ready()
    kick = httpx.post(
        f"{server.base}/$import",
        json=_parameters("patients.ndjson"),
        headers=server.headers(Prefer="respond-async", Accept="application/fhir+json"),
    )
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"]
    asyncio.run(_kill_mid_import(server, fresh_database))

    again = Server(server.env, "--data-dir", str(data_dir))  # the same admin client: the job's owner
    try:
        again.wait_ready()
        manifest = _manifest(again, status_url.replace(server.base, again.base))
        assert manifest["output"] == [{"type": "Patient", "inputUrl": "patients.ndjson", "count": LINES}]
        assert manifest["error"] == []
        assert asyncio.run(_versions(fresh_database, ids)) == (LINES, LINES)  # each once, one version each
    finally:
        again.stop()
