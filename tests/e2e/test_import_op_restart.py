"""A real `ehr serve` killed in the middle of an $import: after a restart the input is taken
over after its last committed unit, and every line is loaded exactly once (one version each)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import httpx
import orjson

from tests.e2e.restart import final_answer, kill, restarted
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


async def _kill_mid_import(server: Server, database_url: str) -> int:
    """SIGKILL the server once its input has committed some units but not all; the position then."""
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(6000):
            position = await conn.fetchval("SELECT position FROM bulk_import_input")
            if position:
                break
            await asyncio.sleep(0.01)
        kill(server)
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

    again = restarted(server, str(data_dir))
    try:
        answer = final_answer(again, status_url.replace(server.base, again.base), seconds=120)
        assert answer.status_code == 200, answer.text
        manifest = answer.json()
        assert manifest["output"] == [{"type": "Patient", "inputUrl": "patients.ndjson", "count": LINES}]
        assert manifest["error"] == []
        assert asyncio.run(_versions(fresh_database, ids)) == (LINES, LINES)  # each once, one version each
    finally:
        again.stop()
