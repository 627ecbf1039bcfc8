"""Conditional create, update and delete (http://hl7.org/fhir/R4/http.html#ccreate)."""

from __future__ import annotations

import uuid

FHIR_JSON = "application/fhir+json"
SYSTEM = "http://example.org/mrn"


def with_mrn(value: str, **extra: object) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}], **extra}


def mrn() -> str:
    return uuid.uuid4().hex


async def test_conditional_create_without_match_creates(client):
    value = mrn()
    res = await client.post("/Patient", json=with_mrn(value), headers={"If-None-Exist": f"identifier={SYSTEM}|{value}"})
    assert res.status_code == 201


async def test_conditional_create_with_one_match_returns_it_and_writes_nothing(client):
    value = mrn()
    first = await client.post("/Patient", json=with_mrn(value))
    again = await client.post(
        "/Patient",
        json=with_mrn(value, gender="male"),
        headers={"If-None-Exist": f"identifier={SYSTEM}|{value}"},
    )
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert "gender" not in again.json()
    history = await client.get(f"/Patient/{first.json()['id']}/_history")
    assert history.json()["total"] == 1


async def test_conditional_create_with_several_matches_is_412(client):
    value = mrn()
    await client.post("/Patient", json=with_mrn(value))
    await client.post("/Patient", json=with_mrn(value))
    res = await client.post("/Patient", json=with_mrn(value), headers={"If-None-Exist": f"identifier={SYSTEM}|{value}"})
    assert res.status_code == 412


async def test_conditional_create_by_id(client):
    created = (await client.post("/Patient", json=with_mrn(mrn()))).json()
    res = await client.post("/Patient", json=with_mrn(mrn()), headers={"If-None-Exist": f"_id={created['id']}"})
    assert res.status_code == 200
    assert res.json()["id"] == created["id"]


async def test_conditional_create_with_unknown_parameter_is_400(client):
    res = await client.post("/Patient", json=with_mrn(mrn()), headers={"If-None-Exist": "bogus=1"})
    assert res.status_code == 400


async def test_conditional_update_without_match_creates(client):
    value = mrn()
    res = await client.put(f"/Patient?identifier={SYSTEM}|{value}", json=with_mrn(value))
    assert res.status_code == 201
    assert res.json()["meta"]["versionId"] == "1"


async def test_conditional_update_with_one_match_updates_it(client):
    value = mrn()
    first = (await client.post("/Patient", json=with_mrn(value))).json()
    res = await client.put(f"/Patient?identifier={SYSTEM}|{value}", json=with_mrn(value, gender="female"))
    assert res.status_code == 200
    assert res.json()["id"] == first["id"]
    assert res.json()["meta"]["versionId"] == "2"


async def test_conditional_update_with_several_matches_is_412(client):
    value = mrn()
    await client.post("/Patient", json=with_mrn(value))
    await client.post("/Patient", json=with_mrn(value))
    res = await client.put(f"/Patient?identifier={SYSTEM}|{value}", json=with_mrn(value))
    assert res.status_code == 412


async def test_conditional_update_finds_new_identifier_after_update(client):
    old, new = mrn(), mrn()
    first = (await client.post("/Patient", json=with_mrn(old))).json()
    await client.put(f"/Patient/{first['id']}", json={**with_mrn(new), "id": first["id"]})
    res = await client.put(f"/Patient?identifier={SYSTEM}|{old}", json=with_mrn(old))
    assert res.status_code == 201  # the old identifier no longer matches
    res = await client.put(f"/Patient?identifier={SYSTEM}|{new}", json=with_mrn(new))
    assert res.json()["id"] == first["id"]


async def test_conditional_delete_removes_the_match(client):
    value = mrn()
    first = (await client.post("/Patient", json=with_mrn(value))).json()
    res = await client.delete(f"/Patient?identifier={SYSTEM}|{value}")
    assert res.status_code == 200
    assert (await client.get(f"/Patient/{first['id']}")).status_code == 410


async def test_conditional_delete_without_match_is_ok(client):
    res = await client.delete(f"/Patient?identifier={SYSTEM}|{mrn()}")
    assert res.status_code == 200


async def test_conditional_delete_with_several_matches_is_412(client):
    value = mrn()
    await client.post("/Patient", json=with_mrn(value))
    await client.post("/Patient", json=with_mrn(value))
    assert (await client.delete(f"/Patient?identifier={SYSTEM}|{value}")).status_code == 412


async def test_conditional_delete_without_criteria_is_400(client):
    assert (await client.delete("/Patient")).status_code == 400


async def test_search_by_identifier_finds_only_matches(client):
    value = mrn()
    first = (await client.post("/Patient", json=with_mrn(value))).json()
    await client.post("/Patient", json=with_mrn(mrn()))
    bundle = (await client.get(f"/Patient?identifier={SYSTEM}|{value}")).json()
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["id"] == first["id"]
    assert bundle["entry"][0]["search"]["mode"] == "match"
    code_only = (await client.get(f"/Patient?identifier={value}")).json()
    assert code_only["total"] == 1
    wrong_system = (await client.get(f"/Patient?identifier=http://other|{value}")).json()
    assert wrong_system["total"] == 0
