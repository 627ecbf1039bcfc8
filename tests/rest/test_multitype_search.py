"""Searches across several types (`_type=A,B`, compartment `*`) apply a parameter only
when every type defines it (R4 search.html#all); otherwise 400 naming the parameter and
the types that lack it, rather than leaving those types unfiltered."""

from __future__ import annotations

import uuid

FHIR_JSON = "application/fhir+json"


def unique() -> str:
    return uuid.uuid4().hex[:16]


async def _create(client, resource: dict) -> dict:
    res = await client.post(f"/{resource['resourceType']}", json=resource, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 201, res.text
    return res.json()


def _diagnostics(res) -> str:
    assert res.json()["resourceType"] == "OperationOutcome"
    return " ".join(i.get("diagnostics", "") for i in res.json()["issue"])


async def test_type_search_with_a_parameter_some_types_lack_answers_400_naming_them(client):
    res = await client.get("/", params={"_type": "Patient,Observation", "code": "x"})
    assert res.status_code == 400, res.text
    message = _diagnostics(res)
    assert "'code'" in message and "Patient" in message and "Observation" not in message.split("for", 1)[1]


async def test_type_search_refuses_a_partial_parameter_in_lenient_handling_too(client):
    res = await client.get(
        "/", params={"_type": "Patient,Observation", "code": "x"}, headers={"Prefer": "handling=lenient"}
    )
    assert res.status_code == 400, res.text


async def test_type_search_with_a_parameter_every_type_has_filters_each_type(client):
    family = unique()
    patient = await _create(client, {"resourceType": "Patient", "name": [{"family": family}]})
    practitioner = await _create(client, {"resourceType": "Practitioner", "name": [{"family": family}]})
    await _create(client, {"resourceType": "Practitioner", "name": [{"family": unique()}]})
    res = await client.get("/", params={"_type": "Patient,Practitioner", "name": family})
    assert res.status_code == 200, res.text
    found = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in res.json()["entry"]}
    assert found == {("Patient", patient["id"]), ("Practitioner", practitioner["id"])}


async def test_compartment_search_of_every_type_with_a_partial_parameter_answers_400(client):
    patient = await _create(client, {"resourceType": "Patient"})
    res = await client.get(f"/Patient/{patient['id']}/*", params={"code": "x"})
    assert res.status_code == 400, res.text
    assert "'code'" in _diagnostics(res)


async def test_compartment_search_of_every_type_takes_common_parameters(client):
    patient = await _create(client, {"resourceType": "Patient"})
    observation = await _create(
        client,
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": f"Patient/{patient['id']}"},
        },
    )
    res = await client.get(f"/Patient/{patient['id']}/*", params={"_id": observation["id"]})
    assert res.status_code == 200, res.text
    assert [e["resource"]["id"] for e in res.json()["entry"]] == [observation["id"]]
