"""An unfiltered sorted search reads the sort parameter's index in order; it must
give exactly what the general plan gives for the same search with a filter."""

from __future__ import annotations

import uuid

import pytest

FHIR_JSON = "application/fhir+json"


async def page_through(client, url: str) -> list[str]:
    ids: list[str] = []
    while url:
        bundle = (await client.get(url)).json()
        ids += [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        url = nxt[0].replace("http://testserver/fhir", "") if nxt else ""
    return ids


@pytest.mark.parametrize("order", ["-date", "date"])
async def test_unfiltered_sort_matches_the_general_plan_and_pages_through_missing_values(client, order):
    dates = ["2020-01-01", "2021-06-15", "2021-06-15", "2019-03-03", None, "2022-12-31T10:00:00Z", None]
    made = []
    for date in dates:
        invoice = {"resourceType": "Invoice", "status": "draft", "identifier": [{"value": uuid.uuid4().hex}]}
        if date:
            invoice["date"] = date
        res = await client.post("/Invoice", json=invoice, headers={"Content-Type": FHIR_JSON})
        made.append((date, res.json()["id"]))
    indexed = await page_through(client, f"/Invoice?_sort={order}&_count=2")
    general = await page_through(client, f"/Invoice?_sort={order}&_count=1000&_lastUpdated=ge2000")
    assert indexed == general
    ours = [rid for rid in indexed if rid in {i for _, i in made}]
    dated = sorted((p for p in made if p[0]), key=lambda p: p[1])  # ties: id ascending
    dated.sort(key=lambda p: p[0], reverse=order == "-date")  # stable: keeps the id order
    assert ours[: len(dated)] == [i for _, i in dated]
    assert set(ours[len(dated) :]) == {i for d, i in made if d is None}  # no value: last
