"""Nobody changes the audit trail through the API or with plain SQL."""

from __future__ import annotations

import asyncpg
import pytest

EVENT = {
    "resourceType": "AuditEvent",
    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
    "recorded": "2026-01-01T00:00:00Z",
    "agent": [{"requestor": True}],
    "source": {"observer": {"display": "x"}},
}


async def test_creating_an_audit_event_through_the_api_is_refused(client):
    response = await client.post("/AuditEvent", json=EVENT)
    assert response.status_code == 405
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_changing_an_audit_event_through_the_api_is_refused(client, method):
    body = {**EVENT, "id": "a1"} if method == "PUT" else ([] if method == "PATCH" else None)
    response = await client.request(method, "/AuditEvent/a1", json=body)
    assert response.status_code == 405


async def test_conditional_delete_of_audit_events_is_refused(client):
    assert (await client.delete("/AuditEvent", params={"outcome": "0"})).status_code == 405


async def test_a_bundle_writing_an_audit_event_is_refused(client):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": EVENT, "request": {"method": "POST", "url": "AuditEvent"}}],
    }
    assert (await client.post("", json=bundle)).status_code == 405


async def test_plain_sql_cannot_update_or_delete_audit_records(client, app, db):
    await client.get("/Patient/anything")
    await app.state.audit.flush()
    for statement in (
        "UPDATE audit_event SET recorded = now()",
        "DELETE FROM audit_event",
        "TRUNCATE audit_event",
    ):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await db.execute(statement)


async def test_plain_sql_cannot_change_the_templates_queued_reads_are_made_from(client, app, db):
    pid = (await client.post("/Patient", json={"resourceType": "Patient"})).json()["id"]
    assert (await client.get(f"/Patient/{pid}")).status_code == 200
    assert await db.fetchval("SELECT count(*) FROM audit_read_template") >= 1
    for statement in (
        "UPDATE audit_read_template SET address = '10.9.9.9'",
        "DELETE FROM audit_read_template",
        "TRUNCATE audit_read_template",
    ):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await db.execute(statement)
