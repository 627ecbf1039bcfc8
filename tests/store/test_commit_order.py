"""lastUpdated comes from the database, and history, `_since` and the outbox never let a
reader skip a write that commits after a later-started one (docs/storage.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from headless_ehr.auth.principal import SYSTEM
from headless_ehr.store.repository import format_instant

FHIR_JSON = "application/fhir+json"


@pytest.fixture
async def in_flight(app, database_url):
    """A second connection, for a transaction left open while others commit."""
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def _post(client, resource: dict) -> dict:
    res = await client.post(f"/{resource['resourceType']}", json=resource, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 201, res.text
    return res.json()


async def _ids(client, url: str, params: dict | None = None) -> tuple[list[str], str]:
    bundle = (await client.get(url, params=params)).json()
    return [e["fullUrl"].rsplit("/", 1)[1] for e in bundle.get("entry", [])], bundle["meta"]["lastUpdated"]


async def test_resource_row_history_outbox_and_json_share_one_database_instant(client, db):
    created = await _post(client, {"resourceType": "Basic", "code": {"text": "stamp"}})
    row = await db.fetchrow(
        "SELECT r.last_updated AS current, h.last_updated AS history, o.created_at AS outbox"
        " FROM resource r JOIN resource_history h USING (resource_type, id)"
        " JOIN outbox o USING (resource_type, id) WHERE r.resource_type = 'Basic' AND r.id = $1",
        created["id"],
    )
    assert row["current"] == row["history"] == row["outbox"]
    assert created["meta"]["lastUpdated"] == format_instant(row["current"])
    stored = await db.fetchval("SELECT content FROM resource WHERE resource_type = 'Basic' AND id = $1", created["id"])
    assert format_instant(row["current"]).encode() in stored


async def test_bundle_creates_carry_the_database_instant_in_their_bytes(client, db):
    body = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Basic", "code": {"text": "b"}},
                "request": {"method": "POST", "url": "Basic"},
            }
        ],
    }
    res = await client.post("", json=body, headers={"Content-Type": FHIR_JSON})
    location = res.json()["entry"][0]["response"]["location"]
    rid = location.split("/")[1]
    current, content = await db.fetchrow(
        "SELECT last_updated, content FROM resource WHERE resource_type = 'Basic' AND id = $1", rid
    )
    assert res.json()["entry"][0]["response"]["lastModified"] == format_instant(current)
    assert (await client.get(f"/Basic/{rid}")).json()["meta"]["lastUpdated"] == format_instant(current)
    assert format_instant(current).encode() in content


async def test_history_holds_back_writes_committed_after_an_in_flight_one(app, client, in_flight):
    marker = (await _post(client, {"resourceType": "Basic", "code": {"text": "before"}}))["meta"]["lastUpdated"]
    tx = in_flight.transaction()
    await tx.start()
    try:
        early = await app.state.store.bound(in_flight).create(SYSTEM, {"resourceType": "Basic", "code": {"text": "A"}})
        late = await _post(client, {"resourceType": "Basic", "code": {"text": "B"}})  # starts later, commits first
        assert late["meta"]["lastUpdated"] > format_instant(early.stored.last_updated)

        for url in ("/Basic/_history", "/_history"):
            shown, settled = await _ids(client, url, {"_since": marker})
            # a reader continuing after B (by time or by _since=settled) would skip A
            assert late["id"] not in shown
            assert early.stored.id not in shown
            assert settled <= format_instant(early.stored.last_updated)
        instance, _ = await _ids(client, f"/Basic/{late['id']}/_history")
        assert instance == []
    finally:
        await tx.commit()

    shown, _ = await _ids(client, "/Basic/_history", {"_since": settled})
    assert {early.stored.id, late["id"]} <= set(shown)
    assert shown.index(late["id"]) < shown.index(early.stored.id)  # newest first


async def test_history_shows_a_committed_write_at_once(client):
    created = await _post(client, {"resourceType": "Basic", "code": {"text": "now"}})
    shown, settled = await _ids(client, "/Basic/_history", {"_since": created["meta"]["lastUpdated"]})
    assert shown == [created["id"]]
    assert settled > created["meta"]["lastUpdated"]


async def test_history_pages_keep_the_first_pages_watermark(client):
    first = await _post(client, {"resourceType": "Basic", "code": {"text": "p1"}})
    await _post(client, {"resourceType": "Basic", "code": {"text": "p2"}})
    params = {"_since": first["meta"]["lastUpdated"], "_count": "1"}
    page1 = (await client.get("/Basic/_history", params=params)).json()
    nxt = next(link["url"] for link in page1["link"] if link["relation"] == "next")
    await _post(client, {"resourceType": "Basic", "code": {"text": "p3"}})
    page2 = (await client.get(nxt.replace("http://testserver/fhir", ""))).json()
    assert page2["meta"]["lastUpdated"] == page1["meta"]["lastUpdated"]
    assert [e["resource"]["id"] for e in page2["entry"]] == [first["id"]]


async def test_outbox_relay_never_skips_a_late_commit(app, client, db, in_flight):
    async def deliver(after: tuple) -> tuple[list[str], tuple]:
        rows = await db.fetch("SELECT * FROM outbox_settled($1, $2, 100000)", *after)
        return [r["id"] for r in rows], ((rows[-1]["created_at"], rows[-1]["seq"]) if rows else after)

    _, position = await deliver((datetime.min.replace(tzinfo=UTC), 0))
    tx = in_flight.transaction()
    await tx.start()
    try:
        early = await app.state.store.bound(in_flight).create(SYSTEM, {"resourceType": "Basic", "code": {"text": "A"}})
        late = await _post(client, {"resourceType": "Basic", "code": {"text": "B"}})
        # B has the higher seq: a relay reading `seq > n` after delivering B would skip A
        delivered, position = await deliver(position)
        assert late["id"] not in delivered
    finally:
        await tx.commit()
    delivered, _ = await deliver(position)
    assert delivered.index(early.stored.id) < delivered.index(late["id"])


async def test_watermark_is_now_without_writers_in_flight(db):
    before = await db.fetchval("SELECT clock_timestamp()")
    settled: datetime = await db.fetchval("SELECT write_watermark()")
    assert settled >= before


async def test_the_audit_recorders_transactions_do_not_hold_history_back(client, database_url):
    """An audit chaining in flight (its own connections, application_name headless-ehr-audit)
    writes no resource row: a write committed meanwhile shows in history at once."""
    from headless_ehr.db.pool import AUDIT_APPLICATION

    audit = await asyncpg.connect(database_url, server_settings={"application_name": AUDIT_APPLICATION})
    other = await asyncpg.connect(database_url)
    try:
        for conn, held in ((audit, False), (other, True)):
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.execute("SELECT pg_current_xact_id()")  # holds a transaction id, as a writer does
                created = await _post(client, {"resourceType": "Basic", "code": {"text": "meanwhile"}})
                instance, _ = await _ids(client, f"/Basic/{created['id']}/_history")
                assert instance == ([] if held else [created["id"]])
            finally:
                await tx.rollback()
    finally:
        await audit.close()
        await other.close()
