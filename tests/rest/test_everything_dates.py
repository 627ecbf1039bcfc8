"""Patient/$everything start and end: care dates (R4 patient-operation-everything)."""

from __future__ import annotations

import uuid

FHIR = {"Content-Type": "application/fhir+json"}


async def _create(client, resource: dict) -> dict:
    r = await client.post(f"/{resource['resourceType']}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    return r.json()


async def _record(client) -> dict[str, str]:
    patient = await _create(client, {"resourceType": "Patient", "name": [{"family": f"Care{uuid.uuid4().hex[:6]}"}]})
    subject = {"reference": f"Patient/{patient['id']}"}
    code = {"text": "weight"}

    async def observation(when: str | None) -> str:
        obs = {"resourceType": "Observation", "status": "final", "code": code, "subject": subject}
        if when:
            obs["effectiveDateTime"] = when
        return (await _create(client, obs))["id"]

    request = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "aspirin"},
        "subject": subject,
        "authoredOn": "2019-06-01",
    }
    return {
        "patient": patient["id"],
        "old": await observation("2019-05-01T10:00:00Z"),
        "in": await observation("2021-03-15T10:00:00Z"),
        "new": await observation("2023-01-01"),
        "undated": await observation(None),
        "order_2019": (await _create(client, request))["id"],
    }


async def _ids(client, patient: str, params: dict[str, str]) -> set[str]:
    r = await client.get(f"/Patient/{patient}/$everything", params={**params, "_count": "100"})
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json()["entry"]}


async def test_start_and_end_keep_resources_with_care_in_the_window(client):
    d = await _record(client)
    ids = await _ids(client, d["patient"], {"start": "2021-01-01", "end": "2021-12-31"})
    assert d["in"] in ids
    assert not {d["old"], d["new"], d["order_2019"]} & ids


async def test_resources_without_a_care_date_are_always_included(client):
    d = await _record(client)
    ids = await _ids(client, d["patient"], {"start": "2021-01-01", "end": "2021-12-31"})
    assert {d["undated"], d["patient"]} <= ids


async def test_start_alone_is_open_ended(client):
    d = await _record(client)
    ids = await _ids(client, d["patient"], {"start": "2021"})
    assert {d["in"], d["new"]} <= ids and d["old"] not in ids


async def test_end_is_inclusive_at_its_precision(client):
    d = await _record(client)
    ids = await _ids(client, d["patient"], {"end": "2019-06"})
    assert {d["old"], d["order_2019"]} <= ids
    assert d["in"] not in ids


async def test_medication_request_care_date_is_authored_on(client):
    d = await _record(client)
    ids = await _ids(client, d["patient"], {"start": "2019-06-01", "end": "2019-06-01"})
    assert d["order_2019"] in ids and d["old"] not in ids


async def test_a_malformed_start_is_400(client):
    d = await _record(client)
    r = await client.get(f"/Patient/{d['patient']}/$everything", params={"start": "yesterday"})
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


async def test_start_after_end_is_400(client):
    d = await _record(client)
    r = await client.get(f"/Patient/{d['patient']}/$everything", params={"start": "2022", "end": "2021"})
    assert r.status_code == 400
