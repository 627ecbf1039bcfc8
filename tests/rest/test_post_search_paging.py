"""`POST [type]/_search` pages on: its paging links are GET URLs on [type] that carry
the form body's criteria, so following them continues the same search."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qsl, urlsplit

FHIR_JSON = "application/fhir+json"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _link(bundle: dict, relation: str) -> str | None:
    return next((item["url"] for item in bundle["link"] if item["relation"] == relation), None)


async def _patients(client, family: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        res = await client.post(
            "/Patient",
            json={"resourceType": "Patient", "name": [{"family": family}]},
            headers={"Content-Type": FHIR_JSON},
        )
        assert res.status_code == 201, res.text
        ids.append(res.json()["id"])
    return sorted(ids)


async def test_post_search_next_link_is_a_get_url_with_the_body_criteria(client):
    family = uuid.uuid4().hex[:16]
    await _patients(client, family, 3)
    res = await client.post("/Patient/_search", content=f"family={family}&_count=1", headers=FORM)
    assert res.status_code == 200, res.text
    url = urlsplit(_link(res.json(), "next"))
    assert url.path == "/fhir/Patient"
    query = dict(parse_qsl(url.query))
    assert query["family"] == family and query["_count"] == "1" and "_cursor" in query


async def test_following_post_search_links_with_get_walks_the_same_search(client):
    family = uuid.uuid4().hex[:16]
    ids = await _patients(client, family, 3)
    await _patients(client, uuid.uuid4().hex[:16], 2)  # other Patients must not show up
    res = await client.post("/Patient/_search", content=f"family={family}&_count=1&_sort=_id", headers=FORM)
    seen = [e["resource"]["id"] for e in res.json()["entry"]]
    url = _link(res.json(), "next")
    while url:
        page = await client.get(url)
        assert page.status_code == 200, page.text
        seen += [e["resource"]["id"] for e in page.json().get("entry", [])]
        url = _link(page.json(), "next")
    assert seen == ids


async def test_post_search_self_link_carries_query_and_body_criteria(client):
    family = uuid.uuid4().hex[:16]
    await _patients(client, family, 1)
    res = await client.post("/Patient/_search?gender=unknown", content=f"family={family}", headers=FORM)
    query = parse_qsl(urlsplit(_link(res.json(), "self")).query)
    assert ("gender", "unknown") in query and ("family", family) in query
