"""create, read, vread, update and delete, as http://hl7.org/fhir/R4/http.html specifies."""

from __future__ import annotations

import uuid

import httpx

FHIR_JSON = "application/fhir+json"


def patient(**extra: object) -> dict:
    return {
        "resourceType": "Patient",
        "name": [{"family": "Chalmers", "given": ["Peter"]}],
        **extra,
    }


async def create(client: httpx.AsyncClient, resource: dict) -> httpx.Response:
    res = await client.post(f"/{resource['resourceType']}", json=resource, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 201, res.text
    return res


async def test_create_assigns_id_version_and_returns_location(client):
    res = await create(client, patient())
    body = res.json()
    assert body["id"] and body["meta"]["versionId"] == "1"
    assert res.headers["etag"] == 'W/"1"'
    assert res.headers["location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert res.headers["last-modified"].endswith("GMT")
    assert res.headers["content-type"].startswith(FHIR_JSON)


async def test_create_ignores_client_id_and_meta_version(client):
    res = await create(client, patient(id="client-chosen", meta={"versionId": "77", "tag": [{"code": "x"}]}))
    body = res.json()
    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["tag"] == [{"code": "x"}]


async def test_read_returns_what_create_returned(client):
    created = (await create(client, patient())).json()
    res = await client.get(f"/Patient/{created['id']}")
    assert res.status_code == 200
    assert res.json() == created
    assert res.headers["etag"] == 'W/"1"'


async def test_read_unknown_id_is_404_operation_outcome(client):
    res = await client.get("/Patient/does-not-exist")
    assert res.status_code == 404
    assert res.json()["resourceType"] == "OperationOutcome"
    assert res.json()["issue"][0]["code"] == "not-found"


async def test_unknown_resource_type_is_404(client):
    res = await client.get("/Patientt/1")
    assert res.status_code == 404
    assert "Patientt" in res.json()["issue"][0]["diagnostics"]


async def test_create_with_mismatched_resource_type_is_400(client):
    res = await client.post("/Observation", json=patient(), headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 400
    assert res.json()["issue"][0]["expression"] == ["resourceType"]


async def test_update_creates_new_version(client):
    created = (await create(client, patient())).json()
    changed = {**created, "gender": "male"}
    res = await client.put(f"/Patient/{created['id']}", json=changed)
    assert res.status_code == 200
    assert res.json()["meta"]["versionId"] == "2"
    assert res.json()["gender"] == "male"
    assert res.headers["etag"] == 'W/"2"'


async def test_update_as_create_uses_client_id(client):
    rid = f"pt-{uuid.uuid4().hex[:10]}"
    res = await client.put(f"/Patient/{rid}", json=patient(id=rid))
    assert res.status_code == 201
    assert res.json()["id"] == rid
    assert res.json()["meta"]["versionId"] == "1"
    assert (await client.get(f"/Patient/{rid}")).status_code == 200


async def test_update_with_id_mismatch_is_400(client):
    res = await client.put("/Patient/abc", json=patient(id="xyz"))
    assert res.status_code == 400
    assert res.json()["issue"][0]["expression"] == ["id"]


async def test_update_without_id_is_400(client):
    res = await client.put("/Patient/abc", json=patient())
    assert res.status_code == 400


async def test_update_with_stale_if_match_is_412(client):
    created = (await create(client, patient())).json()
    url = f"/Patient/{created['id']}"
    changed = {**created, "gender": "female"}
    assert (await client.put(url, json=changed, headers={"If-Match": 'W/"1"'})).status_code == 200
    res = await client.put(url, json={**created, "gender": "male"}, headers={"If-Match": 'W/"1"'})
    assert res.status_code == 412
    assert (await client.get(url)).json()["meta"]["versionId"] == "2"


async def test_malformed_if_match_is_400(client):
    created = (await create(client, patient())).json()
    res = await client.put(f"/Patient/{created['id']}", json=created, headers={"If-Match": "banana"})
    assert res.status_code == 400


async def test_vread_returns_each_version(client):
    created = (await create(client, patient())).json()
    url = f"/Patient/{created['id']}"
    await client.put(url, json={**created, "gender": "female"})
    v1 = await client.get(f"{url}/_history/1")
    v2 = await client.get(f"{url}/_history/2")
    assert v1.status_code == v2.status_code == 200
    assert "gender" not in v1.json() and v2.json()["gender"] == "female"
    assert v1.headers["etag"] == 'W/"1"'
    assert (await client.get(f"{url}/_history/3")).status_code == 404
    assert (await client.get(f"{url}/_history/x")).status_code == 404


async def test_delete_then_read_is_410_gone(client):
    created = (await create(client, patient())).json()
    url = f"/Patient/{created['id']}"
    res = await client.delete(url)
    assert res.status_code == 200
    assert res.json()["resourceType"] == "OperationOutcome"
    gone = await client.get(url)
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    assert (await client.get(f"{url}/_history/1")).status_code == 200


async def test_delete_twice_is_idempotent(client):
    created = (await create(client, patient())).json()
    url = f"/Patient/{created['id']}"
    assert (await client.delete(url)).status_code == 200
    again = await client.delete(url)
    assert again.status_code == 204
    assert again.content == b""
    history = (await client.get(f"{url}/_history")).json()
    assert history["total"] == 2


async def test_delete_unknown_is_204_no_content(client):
    res = await client.delete("/Patient/never-was")
    assert res.status_code == 204
    assert res.content == b""
    assert (await client.get("/Patient/never-was")).status_code == 404


async def test_update_after_delete_revives_with_next_version(client):
    created = (await create(client, patient())).json()
    url = f"/Patient/{created['id']}"
    await client.delete(url)
    res = await client.put(url, json=created)
    assert res.status_code == 201
    assert res.json()["meta"]["versionId"] == "3"


async def test_if_none_match_gives_304(client):
    created = (await create(client, patient())).json()
    url = f"/Patient/{created['id']}"
    assert (await client.get(url, headers={"If-None-Match": 'W/"1"'})).status_code == 304
    assert (await client.get(url, headers={"If-None-Match": 'W/"9"'})).status_code == 200


async def test_if_modified_since_gives_304(client):
    res = await create(client, patient())
    url = f"/Patient/{res.json()['id']}"
    same = await client.get(url, headers={"If-Modified-Since": res.headers["last-modified"]})
    assert same.status_code == 304
    older = await client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert older.status_code == 200


async def test_prefer_return_minimal_gives_empty_body(client):
    res = await client.post("/Patient", json=patient(), headers={"Prefer": "return=minimal", "Content-Type": FHIR_JSON})
    assert res.status_code == 201
    assert res.content == b""
    assert res.headers["location"]


async def test_prefer_return_operation_outcome(client):
    res = await client.post(
        "/Patient",
        json=patient(),
        headers={"Prefer": "return=OperationOutcome", "Content-Type": FHIR_JSON},
    )
    assert res.status_code == 201
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_wrong_method_is_405_with_allow(client):
    res = await client.post("/Patient/123")
    assert res.status_code == 405
    assert "GET" in res.headers["allow"]
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_concurrent_updates_with_same_if_match_exactly_one_wins(client):
    import asyncio

    created = (await create(client, patient())).json()
    url = f"/Patient/{created['id']}"
    for round_ in range(5):
        version = round_ + 1
        genders = ["male", "female", "other", "unknown"] * 3  # each body distinct: none is a no-op
        bodies = [
            {**created, "gender": g, "birthDate": f"20{round_:02d}-01-{i + 1:02d}"} for i, g in enumerate(genders)
        ]
        results = await asyncio.gather(
            *(client.put(url, json=b, headers={"If-Match": f'W/"{version}"'}) for b in bodies)
        )
        codes = sorted(r.status_code for r in results)
        assert codes.count(200) == 1, codes
        assert set(codes) == {200, 412}
        current = (await client.get(url)).json()
        assert current["meta"]["versionId"] == str(version + 1)


async def test_concurrent_updates_without_if_match_lose_nothing(client):
    import asyncio

    created = (await create(client, patient())).json()
    url = f"/Patient/{created['id']}"
    bodies = [{**created, "birthDate": f"2000-01-{i + 1:02d}"} for i in range(12)]  # distinct: none is a no-op
    results = await asyncio.gather(*(client.put(url, json=body) for body in bodies))
    assert all(r.status_code == 200 for r in results)
    versions = sorted(int(r.json()["meta"]["versionId"]) for r in results)
    assert versions == list(range(2, 14))
