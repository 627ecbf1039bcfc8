"""A real `ehr serve` killed in the middle of an export: after a restart the job completes,
with every resource exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import orjson

from tests.e2e.restart import final_answer, kill, restarted
from tests.e2e.test_serve import Server, _env

PATIENTS = 3000


def _transaction(n: int) -> dict:
    entry = {
        "resource": {"resourceType": "Patient", "gender": "female"},
        "request": {"method": "POST", "url": "Patient"},
    }
    return {"resourceType": "Bundle", "type": "transaction", "entry": [entry] * n}


async def _kill_mid_export(server: Server, database_url: str) -> None:
    """SIGKILL the server once its export has committed some pages but not all."""
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(3000):
            row = await conn.fetchrow("SELECT status, (progress->>'written')::int AS written FROM bulk_export_job")
            if row is not None and row["status"] == "running" and (row["written"] or 0) > 0:
                break
            await asyncio.sleep(0.01)
        kill(server)
        row = await conn.fetchrow("SELECT status, (progress->>'written')::int AS written FROM bulk_export_job")
        assert row["status"] == "running" and 0 < row["written"] < PATIENTS, f"not killed mid-export: {dict(row)}"
    finally:
        await conn.close()


def test_an_export_killed_mid_way_completes_after_a_restart_with_each_line_once(fresh_database: str, tmp_path: Path):
    env = _env(EHR_DATABASE_URL=fresh_database, EHR_BULK_PAGE_ROWS="5", EHR_BULK_FILE_BYTES="40000")
    data_dir = str(tmp_path / "data")
    server = Server(env, "--data-dir", data_dir)
    server.wait_ready()
    res = httpx.post(server.base, json=_transaction(PATIENTS), headers=server.headers(), timeout=120)
    assert res.status_code == 200, res.text[:500]
    kick = httpx.get(
        f"{server.base}/$export",
        params={"_type": "Patient"},
        headers=server.headers(Prefer="respond-async", Accept="application/fhir+json"),
    )
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"]
    asyncio.run(_kill_mid_export(server, fresh_database))

    again = restarted(server, data_dir)
    try:
        answer = final_answer(again, status_url.replace(server.base, again.base), seconds=90)
        assert answer.status_code == 200, answer.text
        manifest = answer.json()
        ids: list[str] = []
        for item in manifest["output"]:
            body = httpx.get(item["url"], headers=again.headers(), timeout=30)
            assert body.status_code == 200
            lines = [orjson.loads(line) for line in body.content.splitlines()]
            assert len(lines) == item["count"]
            ids += [p["id"] for p in lines]
        assert len(ids) == PATIENTS
        assert len(set(ids)) == PATIENTS  # no line twice, none missing
        stored = httpx.get(f"{again.base}/Patient", params={"_summary": "count"}, headers=again.headers())
        assert stored.json()["total"] == PATIENTS
    finally:
        again.stop()
