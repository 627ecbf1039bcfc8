"""A real `ehr serve` SIGKILLed while it runs an asynchronous transaction: after a restart
the transaction is applied exactly once and its answer is served from the status URL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import httpx

from tests.e2e.restart import final_answer, kill, restarted
from tests.e2e.test_serve import Server, _env


def _bundle(pid: str, system: str) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "identifier": [{"system": system, "value": "1"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {"resourceType": "Patient", "id": pid, "name": [{"family": "After"}]},
                "request": {"method": "PUT", "url": f"Patient/{pid}"},
            },
        ],
    }


async def _kill_while_it_runs(server: Server, database_url: str, pid: str) -> None:
    """Hold the Patient's row so the transaction waits inside the server, SIGKILL the
    server there, then let the row go."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM resource WHERE resource_type = 'Patient' AND id = $1 FOR UPDATE", pid)
            claimed = False
            for _ in range(1000):
                if await conn.fetchval("SELECT count(*) FROM async_request WHERE status = 'running'"):
                    claimed = True
                    break
                await asyncio.sleep(0.02)
            assert claimed, "the request was never claimed"
            await asyncio.sleep(0.5)  # its transaction is waiting for the row now
            kill(server)
    finally:
        await conn.close()


def test_a_transaction_whose_node_is_killed_is_applied_exactly_once_after_a_restart(
    fresh_database: str, tmp_path: Path
):
    data_dir = str(tmp_path / "data")
    server = Server(_env(EHR_DATABASE_URL=fresh_database), "--data-dir", data_dir)
    server.wait_ready()
    created = httpx.post(
        f"{server.base}/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Before"}]},
        headers=server.headers(),
    )
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    system = f"urn:test:{uuid.uuid4().hex}"
    kick = httpx.post(server.base, json=_bundle(pid, system), headers=server.headers(Prefer="respond-async"))
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"]
    asyncio.run(_kill_while_it_runs(server, fresh_database, pid))

    again = restarted(server, data_dir)
    try:
        res = final_answer(again, status_url.replace(server.base, again.base), seconds=90)
        assert res.status_code == 200, res.text
        assert [e["response"]["status"][:3] for e in res.json()["entry"]] == ["201", "200"]
        made = httpx.get(f"{again.base}/Patient", params={"identifier": f"{system}|1"}, headers=again.headers())
        assert made.json()["total"] == 1
        current = httpx.get(f"{again.base}/Patient/{pid}", headers=again.headers()).json()
        assert current["name"][0]["family"] == "After"
        assert current["meta"]["versionId"] == "2"
    finally:
        again.stop()
