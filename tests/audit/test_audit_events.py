"""Every FHIR request leaves an R4 AuditEvent with the right interaction, outcome, agent and entities."""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import asyncpg
import httpx
import orjson

RESTFUL = "http://hl7.org/fhir/restful-interaction"


async def events_naming(app: Any, db: asyncpg.Pool, needle: str, *, flush: bool = True) -> list[dict]:
    """The AuditEvents whose content mentions needle, oldest first."""
    if flush:
        await app.state.audit.flush()
        rows = await db.fetch(
            "SELECT content FROM audit_event WHERE position($1::bytea in content) > 0 ORDER BY seq", needle.encode()
        )
    else:  # what is on disk now: the chain and the events queued but not yet moved into it
        rows = await db.fetch(
            "SELECT content, recorded FROM audit_event WHERE position($1::bytea in content) > 0"
            " UNION ALL SELECT content, recorded FROM audit_queued WHERE position($1::bytea in content) > 0"
            " ORDER BY recorded",
            needle.encode(),
        )
    return [orjson.loads(r["content"]) for r in rows]


def subtype(event: dict) -> str:
    [coding] = event["subtype"]
    assert coding["system"] == RESTFUL
    return coding["code"]


def query_of(event: dict) -> str:
    return "".join(base64.b64decode(e["query"]).decode() for e in event.get("entity", []) if "query" in e)


def references(event: dict) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", []) if "what" in e]


async def new_patient(client: httpx.AsyncClient) -> str:
    marker = uuid.uuid4().hex
    response = await client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": marker}]})
    assert response.status_code == 201
    return response.json()["id"]


async def test_a_read_records_a_successful_read_event_naming_the_patient(client, app, db):
    pid = await new_patient(client)
    assert (await client.get(f"/Patient/{pid}")).status_code == 200
    [event] = [e for e in await events_naming(app, db, f"Patient/{pid}") if subtype(e) == "read"]
    assert event["resourceType"] == "AuditEvent"
    assert event["type"]["code"] == "rest"
    assert event["action"] == "R"
    assert event["outcome"] == "0"
    assert f"Patient/{pid}" in references(event)
    [client_agent] = event["agent"]
    assert client_agent["who"]["identifier"]["value"] == "test-client"
    assert client_agent["requestor"] is True
    assert client_agent["network"]["address"] == "127.0.0.1"


async def test_a_search_records_its_query_and_the_patient_searched_for(client, app, db):
    pid = await new_patient(client)
    assert (await client.get("/Observation", params={"patient": pid, "code": "1234-5"})).status_code == 200
    [event] = [e for e in await events_naming(app, db, f"Patient/{pid}") if subtype(e) == "search-type"]
    assert event["outcome"] == "0"
    assert f"Patient/{pid}" in references(event)
    [query] = [e for e in event["entity"] if e["role"]["code"] == "24"]
    assert base64.b64decode(query["query"]).decode() == f"/fhir/Observation?patient={pid}&code=1234-5"


async def test_a_create_is_recorded_before_its_response_is_sent(client, app, db):
    pid = await new_patient(client)
    # no flush: a write's event is committed before the write is answered
    [event] = [e for e in await events_naming(app, db, f"Patient/{pid}", flush=False) if subtype(e) == "create"]
    assert event["action"] == "C"
    assert event["outcome"] == "0"
    assert f"Patient/{pid}/_history/1" in references(event)


async def test_a_read_is_recorded_before_its_response_is_sent(client, app, db):
    pid = await new_patient(client)
    assert (await client.get(f"/Patient/{pid}")).status_code == 200
    # no flush: the response waited for the batch holding its event to commit
    [event] = [e for e in await events_naming(app, db, f"Patient/{pid}", flush=False) if subtype(e) == "read"]
    assert event["outcome"] == "0"


async def test_a_write_event_commits_with_its_write_and_moves_into_the_chain(client, app, db):
    pid = await new_patient(client)
    [pending] = await db.fetch("SELECT id, content FROM audit_pending WHERE $1 = ANY(entities)", f"Patient/{pid}")
    await app.state.audit.flush()
    assert await db.fetchval("SELECT count(*) FROM audit_pending WHERE id = $1", pending["id"]) == 0
    chained = await db.fetchrow("SELECT content FROM audit_event WHERE id = $1", pending["id"])
    assert bytes(chained["content"]) == bytes(pending["content"])


async def test_a_refused_write_leaves_no_write_event_only_the_refusal(client, client_for, app, db):
    pid = await new_patient(client)
    reader = await client_for("system/Patient.rs")
    marker = uuid.uuid4().hex
    body = {"resourceType": "Patient", "id": pid, "name": [{"family": marker}]}
    assert (await reader.put(f"/Patient/{pid}", json=body)).status_code == 403
    events = [e for e in await events_naming(app, db, f"Patient/{pid}") if subtype(e) == "update"]
    assert [e["outcome"] for e in events] == ["4"]
    assert not await db.fetchval("SELECT count(*) FROM audit_pending WHERE $1 = ANY(entities)", f"Patient/{pid}")


async def test_a_refused_read_is_recorded_as_a_failure_with_the_reason(client, client_for, app, db):
    pid = await new_patient(client)
    nurse = await client_for("user/Observation.rs", fhirUser="Practitioner/audit-nurse")
    assert (await nurse.get(f"/Patient/{pid}")).status_code == 403
    [event] = [e for e in await events_naming(app, db, f"Patient/{pid}") if subtype(e) == "read"]
    assert event["outcome"] == "4"
    assert event["outcomeDesc"].startswith("403 ")
    [user] = [a for a in event["agent"] if a.get("requestor")]
    assert user["who"]["reference"] == "Practitioner/audit-nurse"


async def test_a_request_without_a_token_is_recorded_with_its_source_address(anonymous, app, db):
    marker = f"Patient/unauth-{uuid.uuid4().hex[:12]}"
    headers = {"X-Forwarded-For": "203.0.113.9"}  # through a trusted proxy (127.0.0.1)
    assert (await anonymous.get(f"/{marker}", headers=headers)).status_code == 401
    [event] = await events_naming(app, db, marker)
    assert event["outcome"] == "4"
    assert event["outcomeDesc"].startswith("401 ")
    [agent] = event["agent"]
    assert "who" not in agent
    assert agent["network"]["address"] == "203.0.113.9"


async def test_a_read_of_an_unknown_resource_is_recorded_as_not_found(client, app, db):
    missing = f"Patient/missing-{uuid.uuid4().hex[:12]}"
    assert (await client.get(f"/{missing}")).status_code == 404
    [event] = await events_naming(app, db, missing)
    assert (subtype(event), event["outcome"]) == ("read", "4")
    assert event["outcomeDesc"].startswith("404 ")


async def test_a_patient_context_token_names_its_patient(client, client_for, app, db):
    pid = await new_patient(client)
    patient = await client_for("patient/*.rs", patient=pid)
    assert (await patient.get("/Observation")).status_code == 200
    [event] = [e for e in await events_naming(app, db, f"Patient/{pid}") if subtype(e) == "search-type"]
    assert f"Patient/{pid}" in references(event)


async def test_no_event_is_recorded_for_the_capability_statement(anonymous, app, db):
    await app.state.audit.flush()
    before = await db.fetchval("SELECT count(*) FROM audit_event")
    assert (await anonymous.get("/metadata")).status_code == 200
    await app.state.audit.flush()
    assert await db.fetchval("SELECT count(*) FROM audit_event") == before


async def test_text_postgresql_cannot_hold_does_not_block_the_log(client, app, db):
    marker = uuid.uuid4().hex
    for path in (f"/Patient/{marker}%00x", f"/Observation?patient={marker}%00x&code=%ED%A0%80"):
        assert (await client.get(path)).status_code < 500
    pid = await asyncio.wait_for(new_patient(client), 10)  # a write still gets its event committed
    assert [subtype(e) for e in await events_naming(app, db, f"Patient/{pid}", flush=False)] == ["create"]
    assert len(await events_naming(app, db, marker)) == 2


async def test_a_transaction_commits_an_event_per_resource_and_a_failed_one_none(client, app, db):
    marker = uuid.uuid4().hex
    patient = {"resourceType": "Patient", "name": [{"family": marker}]}
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": marker},
        "subject": {"reference": "urn:uuid:" + "1" * 8 + "-1111-4111-8111-" + "1" * 12},
    }
    entries = [
        {
            "fullUrl": "urn:uuid:" + "1" * 8 + "-1111-4111-8111-" + "1" * 12,
            "resource": patient,
            "request": {"method": "POST", "url": "Patient"},
        },
        {"resource": observation, "request": {"method": "POST", "url": "Observation"}},
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    response = await client.post("/", json=bundle)
    assert response.status_code == 200
    pid = response.json()["entry"][0]["response"]["location"].split("/")[1]
    creates = [e for e in await events_naming(app, db, f"Patient/{pid}", flush=False) if subtype(e) == "create"]
    assert sorted(references(e)[-1].split("/")[0] for e in creates) == ["Observation", "Patient"]
    assert all(f"Patient/{pid}" in references(e) for e in creates)  # the observation names its patient

    stale = {  # processed after the creates (R4 order), it fails the whole transaction
        "resource": {"resourceType": "Patient", "id": pid},
        "request": {"method": "PUT", "url": f"Patient/{pid}", "ifMatch": 'W/"99"'},
    }
    failing = {**bundle, "entry": [{**entries[0], "resource": {**patient, "name": [{"family": marker + "x"}]}}]}
    failing["entry"].append(stale)
    count = (
        "SELECT (SELECT count(*) FROM audit_event WHERE subtype = 'create')"
        " + (SELECT count(*) FROM audit_pending WHERE subtype = 'create')"
    )
    before = await db.fetchval(count)
    assert (await client.post("/", json=failing)).status_code == 412
    assert await db.fetchval(count) == before  # the create's event rolled back with it


async def test_a_search_names_the_patients_of_what_it_returned_and_each_sees_only_itself(client, client_for, app, db):
    marker = uuid.uuid4().hex
    pids = [await new_patient(client) for _ in range(2)]
    for pid in pids:
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "urn:test", "code": marker}]},
            "subject": {"reference": f"Patient/{pid}"},
        }
        assert (await client.post("/Observation", json=observation)).status_code == 201
    found = await client.get("/Observation", params={"code": f"urn:test|{marker}"})
    assert found.status_code == 200 and found.json()["total"] == 2
    searches = [e for e in await events_naming(app, db, f"Patient/{pids[0]}") if subtype(e) == "search-type"]
    [event] = [e for e in searches if marker in query_of(e)]
    assert {f"Patient/{p}" for p in pids} <= set(references(event))

    # each patient finds the search among the events about them, without the other patient or the query
    for mine, other in (pids, pids[::-1]):
        patient = await client_for("patient/AuditEvent.rs", patient=mine)
        bundle = (await patient.get("/AuditEvent", params={"subtype": "search-type"})).json()
        [seen] = [e["resource"] for e in bundle["entry"] if e["resource"]["id"] == event["id"]]
        assert f"Patient/{mine}" in references(seen)
        assert f"Patient/{other}" not in references(seen)
        assert not [e for e in seen["entity"] if "query" in e]
        assert seen["meta"]["tag"][0]["code"] == "SUBSETTED"
        single = (await patient.get(f"/AuditEvent/{event['id']}")).json()
        assert f"Patient/{other}" not in references(single)


async def test_reading_an_observation_names_its_patient(client, app, db):
    pid = await new_patient(client)
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{pid}"},
    }
    oid = (await client.post("/Observation", json=observation)).json()["id"]
    assert (await client.get(f"/Observation/{oid}")).status_code == 200
    [event] = [e for e in await events_naming(app, db, f"Observation/{oid}") if subtype(e) == "read"]
    assert f"Patient/{pid}" in references(event)


async def test_reading_a_stored_bundle_naming_patients_of_no_id_is_recorded_at_once(client, app, db):
    """A stored Bundle's patients without an id of ours (urn:uuid entries, another server's)
    must neither stall the batch of events nor be named as patients."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {"resourceType": "Patient", "active": True}},
            {"fullUrl": "http://elsewhere.example.org/fhir/Patient/1", "resource": {"resourceType": "Patient"}},
        ],
    }
    bid = (await client.post("/Bundle", json=bundle)).json()["id"]
    read = await asyncio.wait_for(client.get(f"/Bundle/{bid}"), 10)
    assert read.status_code == 200
    [event] = [e for e in await events_naming(app, db, f"Bundle/{bid}") if subtype(e) == "read"]
    assert not [r for r in references(event) if r.startswith("Patient/")]


async def test_a_patient_read_event_made_by_sql_is_the_one_python_makes(client, db):
    """Reads of a Patient queue their event's own parts (store/sql.py READ_CURRENT_AUDITED) and
    the chaining composes it with the caller's template (audit/event.py ReadTemplate): the
    event and its search columns must be those audit/event.py makes."""
    from headless_ehr.audit.event import Interaction, audit_event, read_template
    from headless_ehr.audit.index import index_of
    from headless_ehr.audit.pending import register
    from headless_ehr.auth.principal import Principal
    from headless_ehr.store.sql import READ_CURRENT_AUDITED

    pid = await new_patient(client)
    who = Principal.from_scopes("u-sql", "user/*.rs", client_id="app-sql", fhir_user="Practitioner/p-sql")
    template = read_template(who, "10.1.2.3")
    assert template is not None
    async with db.acquire() as conn:
        template_id = await register(conn, template)
        assert await register(conn, read_template(who, "10.1.2.3")) == template_id  # one row per caller
        assert (await conn.fetchrow(READ_CURRENT_AUDITED, "Patient", pid, template_id, True))[3] is True
        [row] = await conn.fetch(
            "SELECT * FROM audit_queued WHERE $1 = ANY(entities) AND agents @> ARRAY['app-sql']"
            " UNION ALL SELECT id, recorded, content, patients, agents, entities, subtype, outcome, action, address"
            " FROM audit_event WHERE $1 = ANY(entities) AND agents @> ARRAY['app-sql']",
            f"Patient/{pid}",
        )
    made = orjson.loads(bytes(row["content"]))
    python = audit_event(Interaction("read", 200, f"Patient/{pid}", [f"Patient/{pid}"]), who, "10.1.2.3")
    expected = orjson.loads(python.content)
    assert str(row["id"]) == made["id"]
    assert made["recorded"].endswith("Z") and len(made["recorded"]) == len(expected["recorded"])
    for key in ("id", "recorded"):
        made.pop(key), expected.pop(key)
    assert made == expected
    columns = (row["patients"], row["agents"], row["entities"], row["subtype"], row["outcome"], row["action"])
    assert list(columns) == list(python.index.row()[:6]) and row["address"] == python.index.address
    assert index_of(orjson.loads(bytes(row["content"]))).row() == tuple([*columns, row["address"]])
    assert read_template(Principal.from_scopes("pat", "user/*.rs", fhir_user="Patient/1"), "x") is None


async def test_a_read_queues_a_narrow_row_that_the_chain_turns_into_its_event(client, app, db):
    pid = await new_patient(client)
    await app.state.audit.flush()
    assert (await client.get(f"/Patient/{pid}")).status_code == 200
    [queued] = await db.fetch("SELECT id, template FROM audit_read_pending WHERE patient = $1", pid)
    assert not await db.fetchval("SELECT count(*) FROM audit_pending WHERE $1 = ANY(entities)", f"Patient/{pid}")
    await app.state.audit.flush()
    assert not await db.fetchval("SELECT count(*) FROM audit_read_pending WHERE id = $1", queued["id"])
    [event] = await db.fetch("SELECT content, subtype FROM audit_event WHERE id = $1", queued["id"])
    assert event["subtype"] == "read" and f"Patient/{pid}".encode() in bytes(event["content"])


async def test_a_read_whose_template_row_is_gone_is_still_recorded(client, app, db):
    """A template id kept in memory that the database does not have (restored, or changed by
    hand): the read's statement queues nothing, the request records its event as other reads do."""
    pid = await new_patient(client)
    assert (await client.get(f"/Patient/{pid}")).status_code == 200
    await app.state.audit.flush()
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE audit_read_template DISABLE TRIGGER audit_read_template_no_change")
        await conn.execute("DELETE FROM audit_read_template")
        await conn.execute("ALTER TABLE audit_read_template ENABLE TRIGGER audit_read_template_no_change")
    assert (await client.get(f"/Patient/{pid}")).status_code == 200  # recorded as other reads are
    assert (await client.get(f"/Patient/{pid}")).status_code == 200  # a new template row, queued again
    events = [e for e in await events_naming(app, db, f"Patient/{pid}") if subtype(e) == "read"]
    assert [e["outcome"] for e in events] == ["0", "0", "0"]
    assert await db.fetchval("SELECT count(*) FROM audit_read_template") >= 1


async def test_a_write_names_the_patients_it_references_and_no_reference_without_an_id(client, app, db):
    pid = await new_patient(client)
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"type": "Patient", "identifier": {"system": "urn:mrn", "value": uuid.uuid4().hex}},
        "performer": [{"reference": f"Patient/{pid}"}, {"reference": "http://elsewhere.example.org/fhir/Patient/1"}],
    }
    oid = (await client.post("/Observation", json=observation)).json()["id"]
    [event] = [e for e in await events_naming(app, db, f"Observation/{oid}") if subtype(e) == "create"]
    assert [r for r in references(event) if r.startswith("Patient/")] == [f"Patient/{pid}"]
