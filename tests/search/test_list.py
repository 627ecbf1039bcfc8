"""`_list` at type and system level (http://hl7.org/fhir/R4/search.html#list): the
resources a List's entries reference; functional lists (`$current-allergies`) are not
supported and say so."""

from __future__ import annotations

import httpx

from .searching import create, delete, ids_of, match_keys, search, unique


def ref(resource: dict) -> dict:
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


async def a_list(client: httpx.AsyncClient, *items: dict) -> dict:
    return await create(
        client,
        {"resourceType": "List", "status": "current", "mode": "working", "entry": [{"item": ref(i)} for i in items]},
    )


async def test_type_level_list_matches_the_entries_of_that_type(client: httpx.AsyncClient) -> None:
    one = await create(client, {"resourceType": "Patient", "name": [{"family": unique()}]})
    await create(client, {"resourceType": "Patient", "name": [{"family": unique()}]})
    org = await create(client, {"resourceType": "Organization", "name": unique()})
    listed = await a_list(client, one, org)
    assert await ids_of(client, "/Patient", [("_list", listed["id"])]) == {one["id"]}


async def test_system_level_list_matches_entries_of_every_type(client: httpx.AsyncClient) -> None:
    one = await create(client, {"resourceType": "Patient", "name": [{"family": unique()}]})
    org = await create(client, {"resourceType": "Organization", "name": unique()})
    listed = await a_list(client, one, org)
    bundle = await search(client, "/", [("_list", listed["id"])])
    assert match_keys(bundle) == {("Patient", one["id"]), ("Organization", org["id"])}


async def test_system_level_list_with_type_narrows_the_types(client: httpx.AsyncClient) -> None:
    one = await create(client, {"resourceType": "Patient", "name": [{"family": unique()}]})
    org = await create(client, {"resourceType": "Organization", "name": unique()})
    listed = await a_list(client, one, org)
    bundle = await search(client, "/", [("_list", listed["id"]), ("_type", "Organization")])
    assert match_keys(bundle) == {("Organization", org["id"])}


async def test_list_combines_with_other_parameters(client: httpx.AsyncClient) -> None:
    family = unique()
    one = await create(client, {"resourceType": "Patient", "name": [{"family": family}]})
    other = await create(client, {"resourceType": "Patient", "name": [{"family": unique()}]})
    listed = await a_list(client, one, other)
    assert await ids_of(client, "/Patient", [("_list", listed["id"]), ("family", family)]) == {one["id"]}


async def test_deleted_list_matches_nothing(client: httpx.AsyncClient) -> None:
    one = await create(client, {"resourceType": "Patient", "name": [{"family": unique()}]})
    listed = await a_list(client, one)
    await delete(client, listed)
    assert await ids_of(client, "/Patient", [("_list", listed["id"])]) == set()


async def test_functional_list_is_refused_as_not_supported(client: httpx.AsyncClient) -> None:
    res = await client.get("/AllergyIntolerance", params={"_list": "$current-allergies", "patient": "42"})
    assert res.status_code == 400
    assert res.json()["issue"][0]["code"] == "not-supported"


async def test_list_with_an_invalid_id_is_refused(client: httpx.AsyncClient) -> None:
    res = await client.get("/Patient", params={"_list": "not an id!"})
    assert res.status_code == 400
