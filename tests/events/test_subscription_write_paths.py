"""Every way a Subscription is written keeps its state: import, two nodes, and no cost for other types."""

from __future__ import annotations

import asyncio
import json

from headless_ehr.auth.principal import SYSTEM
from headless_ehr.bulk.importer import Importer

from .conftest import code, create, observation, subscription, wait_notified


async def test_an_imported_subscription_gets_its_state(app, db, tmp_path, subscriptions) -> None:
    source = tmp_path / "subscriptions.ndjson"
    source.write_text(json.dumps(subscription(f"Observation?code=urn:test:events|{code()}")) + "\n")
    report = await Importer(app.state.pool, app.state.store, SYSTEM, batch_size=10).run([source])
    assert report.resources == 1 and not report.failures
    sid = await db.fetchval(
        "SELECT id FROM subscription_state WHERE created_at > now() - interval '10 seconds' AND triggers::text LIKE"
        " '%urn:test:events%' ORDER BY created_at DESC LIMIT 1"
    )
    assert sid is not None
    subscriptions.append(sid)
    assert await db.fetchval("SELECT status FROM subscription_state WHERE id = $1", sid) == "active"


async def test_an_imported_invalid_subscription_is_a_failure_not_a_write(app, db, tmp_path) -> None:
    bad = subscription("Observation", channel={"endpoint": "gopher://example.org"})
    source = tmp_path / "bad.ndjson"
    source.write_text(json.dumps(bad) + "\n")
    report = await Importer(app.state.pool, app.state.store, SYSTEM, batch_size=10).run([source])
    assert report.resources == 0 and len(report.failures) == 1


async def test_two_nodes_number_each_event_once(app, app_with, client, db, subscriptions) -> None:
    """A second app on the same database runs a relay too: each event is notified once."""
    other = await app_with()
    c = code()
    sid = (await create(client, subscription(f"Observation?code=urn:test:events|{c}")))["id"]
    subscriptions.append(sid)
    await asyncio.gather(*(create(client if n % 2 else other, observation(c)) for n in range(30)))
    rows = await wait_notified(db, sid, 30)
    await asyncio.sleep(0.3)
    rows = await db.fetch(
        "SELECT event_number, event_seq FROM subscription_notification WHERE subscription_id = $1"
        " ORDER BY event_number",
        sid,
    )
    assert [r["event_number"] for r in rows] == list(range(1, 31))
    assert len({r["event_seq"] for r in rows}) == 30


async def test_put_and_delete_in_a_transaction_keep_the_state(client, db) -> None:
    made = await create(client, subscription("Observation?status=final"))
    sid = made["id"]
    put = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": {**made, "status": "off"}, "request": {"method": "PUT", "url": f"Subscription/{sid}"}}],
    }
    assert (await client.post("/", json=put, headers={"Content-Type": "application/fhir+json"})).status_code == 200
    assert await db.fetchval("SELECT status FROM subscription_state WHERE id = $1", sid) == "off"
    delete = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": f"Subscription/{sid}"}}],
    }
    assert (await client.post("/", json=delete, headers={"Content-Type": "application/fhir+json"})).status_code == 200
    assert await db.fetchval("SELECT count(*) FROM subscription_state WHERE id = $1", sid) == 0


async def test_a_conditional_update_of_a_subscription_keeps_the_state(client, db, subscriptions) -> None:
    endpoint = f"http://127.0.0.1:9/hook/{code()}"
    made = await create(client, subscription("Observation?status=final", channel={"endpoint": endpoint}))
    subscriptions.append(made["id"])
    res = await client.put(
        f"/Subscription?url={endpoint}",
        json={**made, "criteria": "Observation?status=amended"},
        headers={"Content-Type": "application/fhir+json"},
    )
    assert res.status_code == 200, res.text
    triggers = await db.fetchval("SELECT triggers FROM subscription_state WHERE id = $1", made["id"])
    assert "amended" in triggers
