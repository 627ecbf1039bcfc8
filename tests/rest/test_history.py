"""history at instance, type and system level, with _since, _count and paging."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

FHIR_JSON = "application/fhir+json"


async def new_patient(client) -> dict:
    res = await client.post("/Patient", json={"resourceType": "Patient", "active": True})
    assert res.status_code == 201
    return res.json()


async def test_instance_history_is_newest_first_with_methods(client):
    p = await new_patient(client)
    url = f"/Patient/{p['id']}"
    await client.put(url, json={**p, "active": False})
    await client.delete(url)
    bundle = (await client.get(f"{url}/_history")).json()
    assert bundle["type"] == "history"
    assert bundle["total"] == 3
    methods = [e["request"]["method"] for e in bundle["entry"]]
    assert methods == ["DELETE", "PUT", "POST"]
    assert "resource" not in bundle["entry"][0]
    assert bundle["entry"][1]["resource"]["meta"]["versionId"] == "2"
    assert bundle["entry"][2]["response"]["etag"] == 'W/"1"'


async def test_instance_history_of_unknown_resource_is_404(client):
    assert (await client.get("/Patient/nope-nope/_history")).status_code == 404


async def test_type_history_pages_with_next_links(client):
    marker = datetime.now(UTC).isoformat()
    for _ in range(5):
        await client.post("/Basic", json={"resourceType": "Basic", "code": {"text": uuid.uuid4().hex}})
    seen, url = [], f"/Basic/_history?_since={marker}&_count=2"
    while url:
        bundle = (await client.get(url)).json()
        assert len(bundle["entry"]) <= 2
        seen += [e["resource"]["id"] for e in bundle["entry"]]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        url = nxt[0].replace("http://testserver/fhir", "") if nxt else None
    assert len(seen) == len(set(seen)) == 5


async def test_since_excludes_older_versions(client):
    p = await new_patient(client)
    await asyncio.sleep(0.01)
    marker = datetime.now(UTC).isoformat()
    await asyncio.sleep(0.01)
    await client.put(f"/Patient/{p['id']}", json={**p, "active": False})
    bundle = (await client.get(f"/Patient/{p['id']}/_history", params={"_since": marker})).json()
    assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == ["2"]


async def test_system_history_spans_types(client):
    marker = datetime.now(UTC).isoformat()
    await new_patient(client)
    await client.post("/Basic", json={"resourceType": "Basic", "code": {"text": "x"}})
    bundle = (await client.get("/_history", params={"_since": marker})).json()
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert {"Patient", "Basic"} <= types


async def test_bad_since_is_400(client):
    res = await client.get("/_history?_since=yesterday")
    assert res.status_code == 400
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_bad_count_is_400(client):
    assert (await client.get("/_history?_count=-1")).status_code == 400


async def test_bad_cursor_is_400(client):
    assert (await client.get("/_history?_cursor=!!!")).status_code == 400
