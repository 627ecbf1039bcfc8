"""DELETE of an id that does not exist succeeds with 204 (R4 http.html#delete)."""

from __future__ import annotations

FHIR_JSON = "application/fhir+json"


async def send(client, *entries: dict, kind: str = "transaction"):
    body = {"resourceType": "Bundle", "type": kind, "entry": list(entries)}
    return await client.post("", json=body, headers={"Content-Type": FHIR_JSON})


def delete(url: str) -> dict:
    return {"request": {"method": "DELETE", "url": url}}


async def test_rest_delete_of_unknown_id_is_204_without_a_version(client, db):
    res = await client.delete("/Patient/never-existed")
    assert res.status_code == 204
    assert res.content == b""
    assert await db.fetchval("SELECT count(*) FROM resource_history WHERE id = 'never-existed'") == 0


async def test_rest_delete_of_unknown_id_with_if_match_is_412(client):
    res = await client.delete("/Patient/never-existed-either", headers={"If-Match": 'W/"1"'})
    assert res.status_code == 412


async def test_transaction_delete_of_unknown_id_is_204_no_content(client):
    res = await send(client, delete("Patient/not-in-this-server"))
    assert res.status_code == 200, res.text
    assert res.json()["entry"][0]["response"]["status"] == "204 No Content"


async def test_batch_delete_of_unknown_id_is_204_no_content(client):
    res = await send(client, delete("Patient/not-in-this-server-2"), kind="batch")
    assert res.status_code == 200, res.text
    assert res.json()["entry"][0]["response"]["status"] == "204 No Content"
