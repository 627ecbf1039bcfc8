"""A token restricted by v2 scope criteria (`user/Observation.rs?code=<A's code>`) tries
the doors to Observations outside its criteria: counts, history, batches, paging,
compartments and conditional writes. It sees and changes none of them."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.auth.world import FHIR_JSON, IDENT, World, all_pages, ids_of, observation


def a_code(w: World) -> str:
    return f"urn:test:code|{w.a.code}"


@pytest.fixture
async def coded(client_for: Any, world: World) -> httpx.AsyncClient:
    return await client_for(f"user/Observation.rs?code={a_code(world)}")


@pytest.fixture
async def coded_writer(client_for: Any, world: World) -> httpx.AsyncClient:
    return await client_for(f"user/Observation.cruds?code={a_code(world)}")


def outside(w: World) -> set[str]:
    return {w.b.lab, w.b.vitals, w.cross}


async def test_counts_and_totals_count_only_matching_rows(coded, world):
    mine = {world.a.lab, world.a.vitals, world.performed}
    res = await coded.get("/Observation", params={"_id": ",".join(mine | outside(world)), "_summary": "count"})
    assert res.json()["total"] == 3
    res = await coded.get(
        "/Observation", params={"_id": ",".join(mine | outside(world)), "_total": "accurate", "_count": "1"}
    )
    assert res.json()["total"] == 3


async def test_paging_history_and_system_search_stay_inside_the_criteria(coded, world):
    found = await all_pages(coded, "/Observation", {"_sort": "-date", "_count": "1"})
    assert {world.a.lab, world.a.vitals, world.performed} <= found
    assert not found & outside(world)
    found = await all_pages(coded, "/Observation/_history", {"_count": "50"})
    assert not found & outside(world)
    found = await all_pages(coded, "/", {"_type": "Observation", "_id": ",".join(outside(world) | {world.a.lab})})
    assert found == {world.a.lab}
    found = ids_of((await coded.get(f"/Patient/{world.b.patient}/Observation")).json())
    assert found == {world.performed}  # carries A's code, performed by B


async def test_batch_entries_stay_inside_the_criteria(coded, world):
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Observation/{world.b.lab}"}},
            {"request": {"method": "GET", "url": f"Observation?identifier={IDENT}|{world.b.obs_ident}"}},
            {"request": {"method": "GET", "url": f"Observation/{world.a.lab}"}},
        ],
    }
    res = await coded.post("/", json=bundle, headers={"Content-Type": FHIR_JSON})
    entries = res.json()["entry"]
    assert entries[0]["response"]["status"].startswith("404")
    assert ids_of(entries[1]["resource"]) == set()
    assert entries[2]["response"]["status"].startswith("200")


async def test_conditional_writes_do_not_reach_outside_the_criteria(coded_writer, client, world):
    body = observation(world.a.patient, "laboratory", world.a.code)
    res = await coded_writer.put("/Observation", params={"identifier": f"{IDENT}|{world.b.obs_ident}"}, json=body)
    assert res.status_code == 201, res.text
    res = await coded_writer.delete("/Observation", params={"identifier": f"{IDENT}|{world.b.obs_ident}"})
    assert res.status_code in (200, 204)
    assert (await client.get(f"/Observation/{world.b.lab}")).json()["meta"]["versionId"] == "1"


async def test_a_patch_out_of_the_criteria_is_refused(coded_writer, client, world):
    rid = (
        await coded_writer.post("/Observation", json=observation(world.a.patient, "laboratory", world.a.code))
    ).json()["id"]
    patch = [{"op": "replace", "path": "/code/coding/0/code", "value": "elsewhere"}]
    res = await coded_writer.patch(
        f"/Observation/{rid}", content=json.dumps(patch), headers={"Content-Type": "application/json-patch+json"}
    )
    assert res.status_code == 403, res.text
    assert (await client.get(f"/Observation/{rid}")).json()["code"]["coding"][0]["code"] == world.a.code
