"""Bodies over 256 KiB are processed in a worker thread on a connection of its own
(rest/offload.py); they answer exactly as small ones do."""

from __future__ import annotations

import uuid

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _big_patient(family: str, **fields: object) -> dict:
    names = [{"family": family, "given": [f"Given{i:06d}" * 4]} for i in range(4000)]  # ~300 KiB
    return {"resourceType": "Patient", "name": names, **fields}


async def test_large_create_is_stored_and_read_back(client):
    family = uuid.uuid4().hex
    res = await client.post("/Patient", json=_big_patient(family), headers=FHIR_JSON)
    assert res.status_code == 201, res.text
    read = await client.get(f"/Patient/{res.json()['id']}")
    assert len(read.json()["name"]) == 4000
    found = await client.get("/Patient", params={"family": family})
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [res.json()["id"]]


async def test_large_invalid_create_answers_422_and_stores_nothing(client):
    family = uuid.uuid4().hex
    res = await client.post("/Patient", json=_big_patient(family, gender="nonsense"), headers=FHIR_JSON)
    assert res.status_code == 422, res.text
    assert res.json()["resourceType"] == "OperationOutcome"
    found = await client.get("/Patient", params={"family": family})
    assert found.json().get("entry", []) == []


async def test_large_update_creates_a_new_version(client):
    created = await client.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    rid = created.json()["id"]
    res = await client.put(f"/Patient/{rid}", json={**_big_patient("x"), "id": rid}, headers=FHIR_JSON)
    assert res.status_code == 200, res.text
    assert res.json()["meta"]["versionId"] == "2"


async def test_large_transaction_is_atomic(client):
    family = uuid.uuid4().hex
    entries = [
        {"resource": _big_patient(family), "request": {"method": "POST", "url": "Patient"}},
        {
            "resource": {"resourceType": "Patient", "gender": "nonsense"},
            "request": {"method": "POST", "url": "Patient"},
        },
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    res = await client.post("/", json=bundle, headers=FHIR_JSON)
    assert res.status_code == 422, res.text
    found = await client.get("/Patient", params={"family": family})
    assert found.json().get("entry", []) == []
    res = await client.post("/", json={**bundle, "entry": entries[:1]}, headers=FHIR_JSON)
    assert res.status_code == 200, res.text
    assert res.json()["entry"][0]["response"]["status"].startswith("201")


async def test_large_validate_reports_the_issues(client):
    res = await client.post("/Patient/$validate", json=_big_patient("x", gender="nonsense"), headers=FHIR_JSON)
    assert res.status_code == 200, res.text
    assert any(i["severity"] == "error" for i in res.json()["issue"])


async def test_large_create_treats_references_on_the_request_base_as_local(client):
    patient = await client.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    pid = patient.json()["id"]
    # ~300 KiB of Observation, its subject an absolute URL on the base the request came in on
    notes = [{"text": f"note {i:06d} " * 8} for i in range(3000)]
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "big"},
        "subject": {"reference": f"http://testserver/fhir/Patient/{pid}"},
        "note": notes,
    }
    res = await client.post("/Observation", json=observation, headers=FHIR_JSON)
    assert res.status_code == 201, res.text
    found = await client.get("/Observation", params={"patient": pid})
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [res.json()["id"]]
