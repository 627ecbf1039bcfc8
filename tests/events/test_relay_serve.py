"""The relay in real `ehr serve` processes: a node killed with events unrelayed loses none of them."""

from __future__ import annotations

import asyncio
import signal
import time

import asyncpg
import httpx

from tests.e2e.test_serve import Server, _env

from .conftest import code, observation, subscription

FHIR_JSON = "application/fhir+json"


async def test_events_committed_before_a_node_is_killed_are_notified_once_after_restart(fresh_database) -> None:
    env = _env(EHR_DATABASE_URL=fresh_database)
    first = Server(env)
    second: Server | None = None
    try:
        first.wait_ready()
        headers = first.headers(**{"Content-Type": FHIR_JSON})
        c = code()
        http = httpx.AsyncClient(base_url=first.base, headers=headers)
        made = await http.post("/Subscription", json=subscription(f"Observation?code=urn:test:events|{c}"))
        assert made.status_code == 201, made.text
        sid = made.json()["id"]
        holder = await asyncpg.connect(fresh_database)
        try:
            async with holder.transaction():  # the relay cannot take its turn: the events wait, committed
                await holder.fetchrow("SELECT 1 FROM event_cursor WHERE name = 'subscriptions' FOR UPDATE")
                ids = []
                for _ in range(5):
                    res = await http.post("/Observation", json=observation(c))
                    assert res.status_code == 201, res.text
                    ids.append(res.json()["id"])
                await http.aclose()
                first.proc.send_signal(signal.SIGKILL)
                first.proc.wait(30)
            assert (
                await holder.fetchval("SELECT count(*) FROM subscription_notification WHERE subscription_id = $1", sid)
                == 0
            )
            second = Server(env)
            second.wait_ready()
            deadline = time.monotonic() + 20
            rows: list[asyncpg.Record] = []
            while time.monotonic() < deadline:
                rows = await holder.fetch(
                    "SELECT event_number, resource_id FROM subscription_notification WHERE subscription_id = $1"
                    " ORDER BY event_number",
                    sid,
                )
                if len(rows) >= 5:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # nothing more comes
            rows = await holder.fetch(
                "SELECT event_number, resource_id FROM subscription_notification WHERE subscription_id = $1"
                " ORDER BY event_number",
                sid,
            )
        finally:
            await holder.close()
        assert [(r["event_number"], r["resource_id"]) for r in rows] == list(zip(range(1, 6), ids, strict=True))
    finally:
        for server in (first, second):
            if server is not None:
                server.stop()  # a killed one: its data dir is removed
