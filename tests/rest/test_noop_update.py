"""An update whose content equals the current version's writes no new version and
answers 200 with the current version, in REST and in bundles."""

from __future__ import annotations

import json
import uuid

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"


async def new_patient(client) -> dict:
    body = {"resourceType": "Patient", "active": True, "name": [{"family": f"F{uuid.uuid4().hex[:8]}"}]}
    res = await client.post("/Patient", json=body, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 201
    return res.json()


async def versions(db, rid: str) -> tuple[int, int]:
    """(history rows, outbox rows) of one resource."""
    return (
        await db.fetchval("SELECT count(*) FROM resource_history WHERE id = $1", rid),
        await db.fetchval("SELECT count(*) FROM outbox WHERE id = $1", rid),
    )


def assert_unchanged(res, created: dict) -> None:
    assert res.status_code == 200, res.text
    assert res.headers["etag"] == 'W/"1"'
    assert res.json()["meta"] == created["meta"]


async def test_put_of_identical_content_keeps_the_version(client, db):
    p = await new_patient(client)
    res = await client.put(f"/Patient/{p['id']}", json=p)
    assert_unchanged(res, p)
    assert res.headers["last-modified"] == (await client.get(f"/Patient/{p['id']}")).headers["last-modified"]
    assert await versions(db, p["id"]) == (1, 1)


async def test_put_differing_only_in_server_meta_keeps_the_version(client, db):
    p = await new_patient(client)
    body = {**p, "meta": {"versionId": "7", "lastUpdated": "2001-01-01T00:00:00Z"}}
    assert_unchanged(await client.put(f"/Patient/{p['id']}", json=body), p)
    without_meta = {k: v for k, v in p.items() if k != "meta"}
    assert_unchanged(await client.put(f"/Patient/{p['id']}", json=without_meta), p)
    assert await versions(db, p["id"]) == (1, 1)


async def test_put_with_other_content_is_a_new_version(client, db):
    p = await new_patient(client)
    res = await client.put(f"/Patient/{p['id']}", json={**p, "active": False})
    assert res.status_code == 200
    assert res.headers["etag"] == 'W/"2"'
    assert await versions(db, p["id"]) == (2, 2)


async def test_put_with_a_changed_tag_is_a_new_version(client):
    p = await new_patient(client)
    body = {**p, "meta": {"tag": [{"system": "urn:t", "code": "x"}]}}
    assert (await client.put(f"/Patient/{p['id']}", json=body)).headers["etag"] == 'W/"2"'


async def test_patch_that_changes_nothing_keeps_the_version(client, db):
    p = await new_patient(client)
    ops = [{"op": "replace", "path": "/active", "value": True}]
    res = await client.patch(f"/Patient/{p['id']}", content=json.dumps(ops), headers={"Content-Type": JSON_PATCH})
    assert_unchanged(res, p)
    assert await versions(db, p["id"]) == (1, 1)


async def test_conditional_update_with_identical_content_keeps_the_version(client, db):
    p = await new_patient(client)
    family = p["name"][0]["family"]
    res = await client.put(f"/Patient?family={family}", json=p, headers={"Content-Type": FHIR_JSON})
    assert_unchanged(res, p)
    assert await versions(db, p["id"]) == (1, 1)


async def test_bundle_put_of_identical_content_keeps_the_version(client, db):
    p = await new_patient(client)
    for kind in ("transaction", "batch"):
        body = {
            "resourceType": "Bundle",
            "type": kind,
            "entry": [{"resource": p, "request": {"method": "PUT", "url": f"Patient/{p['id']}"}}],
        }
        res = await client.post("", json=body, headers={"Content-Type": FHIR_JSON})
        assert res.status_code == 200, res.text
        response = res.json()["entry"][0]["response"]
        assert response["status"] == "200 OK"
        assert response["etag"] == 'W/"1"'
        assert response["lastModified"] == p["meta"]["lastUpdated"]
    assert await versions(db, p["id"]) == (1, 1)


async def test_bundle_patch_that_changes_nothing_keeps_the_version(client, db):
    p = await new_patient(client)
    patch = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Patient.active"},
                    {"name": "value", "valueBoolean": True},
                ],
            }
        ],
    }
    body = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": patch, "request": {"method": "PATCH", "url": f"Patient/{p['id']}"}}],
    }
    res = await client.post("", json=body, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 200, res.text
    assert res.json()["entry"][0]["response"]["etag"] == 'W/"1"'
    assert await versions(db, p["id"]) == (1, 1)
