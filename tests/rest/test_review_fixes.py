"""Regressions found reviewing the merged issue-9 slices, where two slices meet."""

from __future__ import annotations

import uuid

import httpx
import pytest

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _big_patient(family: str) -> dict:
    names = [{"family": family, "given": [f"Given{i:06d}" * 4]} for i in range(4000)]  # ~300 KiB: offloaded
    return {"resourceType": "Patient", "name": names}


async def test_large_batch_runs_its_conditional_entries(client):
    """A batch over 256 KiB runs in a worker thread with its own event loop: its
    conditional entries must not use the app's pool, which belongs to the main loop."""
    family, marker = uuid.uuid4().hex, uuid.uuid4().hex
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": _big_patient(family), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": marker}]},
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier=urn:x|{marker}"},
            },
        ],
    }
    res = await client.post("/", json=bundle, headers=FHIR_JSON)
    assert res.status_code == 200, res.text
    assert [e["response"]["status"][:3] for e in res.json()["entry"]] == ["201", "201"]
    again = await client.post("/", json=bundle, headers=FHIR_JSON)
    assert [e["response"]["status"][:3] for e in again.json()["entry"]] == ["201", "200"]


async def test_conditional_create_on_our_absolute_base_takes_the_relative_criteria_lock(client, db):
    """`subject=<our base>/Patient/1` matches what `subject=Patient/1` matches, so both
    spellings serialise on one lock: else two clients spelling it differently both create."""
    import asyncio

    from headless_ehr.search.criteria import conditional_criteria

    patient = await client.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    pid, code = patient.json()["id"], uuid.uuid4().hex
    relative = conditional_criteria("Observation", f"subject=Patient/{pid}&code=urn:x|{code}", "create")
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "urn:x", "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
    }
    header = {**FHIR_JSON, "If-None-Exist": f"subject=http://testserver/fhir/Patient/{pid}&code=urn:x|{code}"}
    async with db.acquire() as holder, holder.transaction():
        await holder.execute("SELECT pg_advisory_xact_lock($1)", relative.lock_key)
        pending = asyncio.ensure_future(client.post("/Observation", json=observation, headers=header))
        await asyncio.sleep(1.0)
        assert not pending.done(), "the absolute spelling did not wait for the relative spelling's lock"
    res = await pending
    assert res.status_code == 201, res.text


@pytest.fixture
async def impatient_client(app_with) -> httpx.AsyncClient:
    """A second app on the same database whose statements time out after 500 ms."""
    return await app_with(statement_timeout_ms=500)


async def test_batch_entry_cancelled_by_statement_timeout_fails_alone(impatient_client, db):
    """A batch's entries commit one by one: when one runs past the statement timeout,
    that entry answers 503 and the others report what they did, instead of the whole
    batch answering 503 after some entries were already stored."""
    from headless_ehr.search.criteria import conditional_criteria

    family, marker = uuid.uuid4().hex, uuid.uuid4().hex
    criteria = conditional_criteria("Patient", f"identifier=urn:x|{marker}", "create")
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "name": [{"family": family}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": marker}]},
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier=urn:x|{marker}"},
            },
        ],
    }
    async with db.acquire() as holder, holder.transaction():
        await holder.execute("SELECT pg_advisory_xact_lock($1)", criteria.lock_key)  # the second entry waits
        res = await impatient_client.post("/", json=bundle, headers=FHIR_JSON)
    assert res.status_code == 200, res.text
    assert [e["response"]["status"][:3] for e in res.json()["entry"]] == ["201", "503"]


async def test_transaction_refuses_the_same_if_none_exist_spelled_absolute_and_relative(client):
    """Two ifNoneExist entries whose criteria differ only in spelling a reference on our
    base absolute or relative would both create: they overlap (trules), so 400."""
    patient = await client.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    pid, code = patient.json()["id"], uuid.uuid4().hex
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "urn:x", "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
    }
    spellings = [f"Patient/{pid}", f"http://testserver/fhir/Patient/{pid}"]
    entries = [
        {
            "resource": observation,
            "request": {"method": "POST", "url": "Observation", "ifNoneExist": f"subject={s}&code=urn:x|{code}"},
        }
        for s in spellings
    ]
    res = await client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert res.status_code == 400, res.text
    found = await client.get("/Observation", params={"code": f"urn:x|{code}"})
    assert found.json()["total"] == 0


async def test_conditional_put_of_raw_content_stores_a_binary(client):
    """A PUT of non-FHIR content stores it as a Binary (R4 binary.html#rest), the
    conditional PUT (`Binary?criteria`) too, as the plain PUT and POST do."""
    marker = uuid.uuid4().hex
    res = await client.put(f"/Binary?_id={marker}", content=b"hello", headers={"Content-Type": "text/plain"})
    assert res.status_code == 201, res.text
    read = await client.get(f"/Binary/{res.json()['id']}", headers={"Accept": "text/plain"})
    assert read.content == b"hello"
    assert read.headers["content-type"].startswith("text/plain")


async def test_everything_takes_the_general_pretty_parameter(client):
    """_pretty is a parameter of every interaction (R4 http.html#parameters), ignored
    here as on search, not a 400."""
    patient = await client.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    res = await client.get(f"/Patient/{patient.json()['id']}/$everything", params={"_pretty": "true"})
    assert res.status_code == 200, res.text
    assert [e["resource"]["resourceType"] for e in res.json()["entry"]] == ["Patient"]
