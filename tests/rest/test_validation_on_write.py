"""Every write is validated: bad input is 422 (or 400) and nothing is stored."""

from __future__ import annotations

import pytest

FHIR_JSON = "application/fhir+json"

CASES = {
    "unknown element": (
        {"resourceType": "Patient", "favouriteColour": "blue"},
        "Patient.favouriteColour",
    ),
    "wrong json type": ({"resourceType": "Patient", "active": "yes"}, "Patient.active"),
    "bad date": ({"resourceType": "Patient", "birthDate": "1999-02-30x"}, "Patient.birthDate"),
    "array for single": ({"resourceType": "Patient", "gender": ["male"]}, "Patient.gender"),
    "single for array": ({"resourceType": "Patient", "name": {"family": "X"}}, "Patient.name"),
    "required binding": (
        {"resourceType": "Observation", "status": "bogus", "code": {"text": "x"}},
        "Observation.status",
    ),
    "missing required": (
        {"resourceType": "Observation", "code": {"text": "x"}},
        "Observation.status",
    ),
    "two choices": (
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "valueString": "a",
            "valueBoolean": True,
        },
        "Observation",
    ),
    "malformed reference": (
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/"},
        },
        "Observation.subject.reference",
    ),
    "contained invalid": (
        {
            "resourceType": "Patient",
            "contained": [{"resourceType": "Organization", "id": "o", "active": "no"}],
        },
        "Patient.contained[0].active",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_invalid_resource_is_422_naming_the_element(client, db, name):
    resource, expression = CASES[name]
    before = await db.fetchval("SELECT count(*) FROM resource_history")
    res = await client.post(f"/{resource['resourceType']}", json=resource, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 422, res.text
    outcome = res.json()
    assert outcome["resourceType"] == "OperationOutcome"
    expressions = [e for i in outcome["issue"] for e in i.get("expression", [])]
    assert any(e.startswith(expression) for e in expressions), expressions
    assert await db.fetchval("SELECT count(*) FROM resource_history") == before


async def test_invalid_update_leaves_the_current_version(client):
    res = await client.post("/Patient", json={"resourceType": "Patient"}, headers={"Content-Type": FHIR_JSON})
    rid = res.json()["id"]
    bad = await client.put(f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid, "gender": 1})
    assert bad.status_code == 422
    assert (await client.get(f"/Patient/{rid}")).json()["meta"]["versionId"] == "1"


async def test_unknown_resource_type_in_body_is_rejected(client):
    res = await client.post("/Patient", json={"resourceType": "Patientt"}, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 400
