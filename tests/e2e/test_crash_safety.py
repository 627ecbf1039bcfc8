"""SIGKILL in the middle of a large transaction leaves nothing of it behind."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import uuid

import asyncpg
import httpx

from tests.e2e.test_serve import Server, _env

CONSISTENCY_CHECKS = {
    "current version without history": """
        SELECT count(*) FROM resource r WHERE NOT EXISTS (
            SELECT 1 FROM resource_history h
            WHERE h.resource_type = r.resource_type AND h.id = r.id AND h.version_id = r.version_id)""",
    "history without current row": """
        SELECT count(*) FROM resource_history h WHERE NOT EXISTS (
            SELECT 1 FROM resource r WHERE r.resource_type = h.resource_type AND r.id = h.id)""",
    "token rows without resource": """
        SELECT count(*) FROM search_token t WHERE NOT EXISTS (
            SELECT 1 FROM resource r WHERE r.resource_type = t.resource_type AND r.id = t.resource_id
            AND NOT r.deleted)""",
    "outbox rows without history": """
        SELECT count(*) FROM outbox o WHERE NOT EXISTS (
            SELECT 1 FROM resource_history h
            WHERE h.resource_type = o.resource_type AND h.id = o.id AND h.version_id = o.version_id)""",
}


def big_transaction(tag: str, n: int) -> dict:
    entries = []
    for _ in range(n):
        pid = f"urn:uuid:{uuid.uuid4()}"
        entries.append(
            {
                "fullUrl": pid,
                "resource": {
                    "resourceType": "Patient",
                    "meta": {"tag": [{"system": "urn:crash", "code": tag}]},
                    "name": [{"family": "Crash", "given": ["Test"]}],
                    "birthDate": "1970-01-01",
                },
                "request": {"method": "POST", "url": "Patient"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def test_sigkill_mid_transaction_stores_nothing_of_it(database_url):
    env = _env(EHR_DATABASE_URL=database_url, EHR_MAX_BODY_BYTES=str(64 * 1024 * 1024))
    tag = uuid.uuid4().hex
    outcome: dict[str, object] = {}
    server = Server(env)
    server.wait_ready()
    auth = server.headers()

    def send() -> None:
        try:
            res = httpx.post(
                f"{server.base}",
                json=big_transaction(tag, 20000),
                headers={**auth, "Content-Type": "application/fhir+json"},
                timeout=120,
            )
            outcome["status"] = res.status_code
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    watcher = await asyncpg.connect(database_url)
    thread = threading.Thread(target=send)
    thread.start()
    try:  # kill the server as soon as its database transaction for the bundle is open
        for _ in range(3000):
            open_transactions = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND application_name = 'headless-ehr'"
                " AND (state = 'idle in transaction' OR query LIKE '%INSERT INTO resource %')"
            )
            if open_transactions:
                break
            await asyncio.sleep(0.005)
    finally:
        await watcher.close()
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=10)
    thread.join(timeout=30)
    assert "error" in outcome, f"the transaction finished before the kill ({outcome}); make it bigger"

    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(50):  # PostgreSQL notices the dropped connection and rolls back
            busy = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'active' AND pid <> pg_backend_pid()"
            )
            if not busy:
                break
            await asyncio.sleep(0.1)
        stored = await conn.fetchval("SELECT count(*) FROM search_token WHERE param = '_tag' AND code = $1", tag)
        history = await conn.fetchval(
            "SELECT count(*) FROM resource_history WHERE position($1::bytea in content) > 0", tag.encode()
        )
        assert stored == 0 and history == 0
        for name, sql in CONSISTENCY_CHECKS.items():
            assert await conn.fetchval(sql) == 0, name
    finally:
        await conn.close()

    again = Server(env)  # restarts cleanly on the same database
    try:
        again.wait_ready()
        async with httpx.AsyncClient(headers=again.headers()) as http:
            res = await http.get(f"{again.base}/Patient", params={"_tag": f"urn:crash|{tag}", "_total": "accurate"})
        assert res.json()["total"] == 0
    finally:
        assert again.stop() == 0
