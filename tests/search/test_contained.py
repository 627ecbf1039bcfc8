"""`_contained` and `_containedType` (http://hl7.org/fhir/R4/search.html#contained).

Contained resources are not indexed on their own: the default (`_contained=false`,
matches are the resources themselves, never what they contain) is served, and a request
for contained matches (`_contained=true|both`, `_containedType=contained`) is a 400
not-supported rather than an answer with fewer resources than it asked for."""

from __future__ import annotations

import httpx

from .searching import create, ids_of, unique


def medication_request(code: str) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "contained": [
            {"resourceType": "Medication", "id": "m1", "code": {"coding": [{"system": "http://x.org", "code": code}]}}
        ],
        "medicationReference": {"reference": "#m1"},
        "subject": {"reference": "Patient/p1", "display": "p1"},
    }


async def test_contained_resources_are_not_matches_by_default(client: httpx.AsyncClient) -> None:
    code = unique()
    await create(client, medication_request(code))
    standalone = await create(
        client, {"resourceType": "Medication", "code": {"coding": [{"system": "http://x.org", "code": code}]}}
    )
    assert await ids_of(client, "/Medication", [("code", code)]) == {standalone["id"]}


async def test_contained_false_is_the_default(client: httpx.AsyncClient) -> None:
    code = unique()
    await create(client, medication_request(code))
    standalone = await create(
        client, {"resourceType": "Medication", "code": {"coding": [{"system": "http://x.org", "code": code}]}}
    )
    found = await ids_of(client, "/Medication", [("code", code), ("_contained", "false")])
    assert found == {standalone["id"]}


async def test_contained_type_container_is_accepted(client: httpx.AsyncClient) -> None:
    code = unique()
    standalone = await create(
        client, {"resourceType": "Medication", "code": {"coding": [{"system": "http://x.org", "code": code}]}}
    )
    found = await ids_of(client, "/Medication", [("code", code), ("_containedType", "container")])
    assert found == {standalone["id"]}


async def test_searching_contained_resources_is_refused_as_not_supported(client: httpx.AsyncClient) -> None:
    for value in ("true", "both"):
        res = await client.get("/Medication", params={"code": "x", "_contained": value})
        assert res.status_code == 400, value
        assert res.json()["issue"][0]["code"] == "not-supported"


async def test_returning_contained_resources_is_refused_as_not_supported(client: httpx.AsyncClient) -> None:
    res = await client.get("/Medication", params={"_containedType": "contained"})
    assert res.status_code == 400
    assert res.json()["issue"][0]["code"] == "not-supported"


async def test_contained_with_an_unknown_value_is_invalid(client: httpx.AsyncClient) -> None:
    for name, value in (("_contained", "yes"), ("_containedType", "inside")):
        res = await client.get("/Medication", params={name: value})
        assert res.status_code == 400, name
        assert res.json()["issue"][0]["code"] == "invalid"
