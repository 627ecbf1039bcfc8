"""`_contained` and `_containedType` (http://hl7.org/fhir/R4/search.html#contained).

`_contained=false` (the default) matches resources themselves, never what they contain;
`true` matches resources contained in others and returns their containers
(`_containedType=container`, the default) or the contained resources themselves
(`_containedType=contained`, with the container's fullUrl plus `#id`); `both` does both.
Contained resources are indexed only with EHR_INDEX_CONTAINED (HAPI's default is off too): these
tests turn it on, except the one checking the refusal without it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from headless_ehr.search.extract import OPTIONS

from .searching import create, ids_of, link, match_keys, search, unique

SYSTEM = "http://x.org/codes"


@pytest.fixture(autouse=True)
def index_contained() -> Iterator[None]:
    """EHR_INDEX_CONTAINED on for each test of this module."""
    before = OPTIONS.contained
    OPTIONS.contained = True
    try:
        yield
    finally:
        OPTIONS.contained = before


@pytest.fixture
def without_contained_index(index_contained: None) -> None:
    """EHR_INDEX_CONTAINED off (the default), for the tests of what that means."""
    OPTIONS.contained = False


def medication(code: str, form: str | None = None, **fields: object) -> dict:
    resource: dict = {"resourceType": "Medication", "code": {"coding": [{"system": SYSTEM, "code": code}]}, **fields}
    if form is not None:
        resource["form"] = {"coding": [{"system": SYSTEM, "code": form}]}
    return resource


def medication_request(*contained: dict) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "contained": list(contained),
        "medicationReference": {"reference": f"#{contained[0]['id']}"},
        "subject": {"reference": "Patient/p1", "display": "p1"},
    }


async def test_contained_resources_are_not_matches_by_default(client: httpx.AsyncClient) -> None:
    code = unique()
    await create(client, medication_request(medication(code, id="m1")))
    standalone = await create(client, medication(code))
    assert await ids_of(client, "/Medication", [("code", code)]) == {standalone["id"]}
    assert await ids_of(client, "/Medication", [("code", code), ("_contained", "false")]) == {standalone["id"]}


async def test_contained_true_returns_the_containers_of_matching_contained_resources(
    client: httpx.AsyncClient,
) -> None:
    code = unique()
    container = await create(client, medication_request(medication(code, id="m1")))
    await create(client, medication_request(medication(unique(), id="m1")))
    await create(client, medication(code))  # standalone: not contained
    bundle = await search(client, "/Medication", [("code", code), ("_contained", "true")])
    assert match_keys(bundle) == {("MedicationRequest", container["id"])}


async def test_contained_both_returns_resources_and_containers(client: httpx.AsyncClient) -> None:
    code = unique()
    container = await create(client, medication_request(medication(code, id="m1")))
    standalone = await create(client, medication(code))
    bundle = await search(client, "/Medication", [("code", code), ("_contained", "both")])
    assert match_keys(bundle) == {("MedicationRequest", container["id"]), ("Medication", standalone["id"])}


async def test_contained_criteria_must_all_hold_for_one_contained_resource(client: httpx.AsyncClient) -> None:
    code, form = unique(), unique()
    # one contained Medication has the code, another the form: neither has both
    await create(client, medication_request(medication(code, id="m1"), medication(unique(), form, id="m2")))
    both = await create(client, medication_request(medication(code, form, id="m1")))
    bundle = await search(client, "/Medication", [("code", code), ("form", form), ("_contained", "true")])
    assert match_keys(bundle) == {("MedicationRequest", both["id"])}


async def test_contained_matches_follow_updates_and_deletes_of_the_container(client: httpx.AsyncClient) -> None:
    code = unique()
    container = await create(client, medication_request(medication(code, id="m1")))
    container["contained"] = [medication(unique(), id="m1")]
    assert (await client.put(f"/MedicationRequest/{container['id']}", json=container)).status_code == 200
    assert match_keys(await search(client, "/Medication", [("code", code), ("_contained", "true")])) == set()
    other = await create(client, medication_request(medication(code, id="m1")))
    assert (await client.delete(f"/MedicationRequest/{other['id']}")).status_code in (200, 204)
    assert match_keys(await search(client, "/Medication", [("code", code), ("_contained", "true")])) == set()


async def test_contained_type_container_is_accepted(client: httpx.AsyncClient) -> None:
    code = unique()
    container = await create(client, medication_request(medication(code, id="m1")))
    params = [("code", code), ("_contained", "true"), ("_containedType", "container")]
    assert match_keys(await search(client, "/Medication", params)) == {("MedicationRequest", container["id"])}


async def test_contained_true_pages_through_containers(client: httpx.AsyncClient) -> None:
    code = unique()
    made = {(await create(client, medication_request(medication(code, id="m1"))))["id"] for _ in range(3)}
    bundle = await search(client, "/Medication", [("code", code), ("_contained", "true"), ("_count", "2")])
    seen = {e["resource"]["id"] for e in bundle["entry"]}
    following = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    res = await client.get(following)
    assert res.status_code == 200, res.text
    seen |= {e["resource"]["id"] for e in res.json()["entry"]}
    assert seen == made


async def test_contained_with_a_chain_is_refused_as_not_supported(client: httpx.AsyncClient) -> None:
    res = await client.get("/Medication", params={"manufacturer.name": "x", "_contained": "true"})
    assert res.status_code == 400
    assert res.json()["issue"][0]["code"] == "not-supported"


async def test_contained_with_an_unknown_value_is_invalid(client: httpx.AsyncClient) -> None:
    for name, value in (("_contained", "yes"), ("_containedType", "inside")):
        res = await client.get("/Medication", params={name: value})
        assert res.status_code == 400, name
        assert res.json()["issue"][0]["code"] == "invalid"


async def test_reindex_indexes_contained_resources_stored_before(client: httpx.AsyncClient, db: object) -> None:
    from headless_ehr.store.reindex import reindex_resource

    code = unique()
    container = await create(client, medication_request(medication(code, id="m1")))
    await db.execute(  # type: ignore[attr-defined]
        "DELETE FROM search_contained WHERE resource_type = 'MedicationRequest' AND resource_id = $1", container["id"]
    )
    assert match_keys(await search(client, "/Medication", [("code", code), ("_contained", "true")])) == set()
    assert await reindex_resource(db, "MedicationRequest", container["id"])  # type: ignore[arg-type]
    found = match_keys(await search(client, "/Medication", [("code", code), ("_contained", "true")]))
    assert found == {("MedicationRequest", container["id"])}


async def test_contained_true_without_the_contained_index_is_refused_naming_the_setting(
    client: httpx.AsyncClient, without_contained_index: None
) -> None:
    res = await client.get("/Medication", params={"code": "x", "_contained": "true"})
    assert res.status_code == 400
    issue = res.json()["issue"][0]
    assert issue["code"] == "not-supported" and "EHR_INDEX_CONTAINED" in issue["diagnostics"]


async def test_contained_resources_are_not_indexed_without_the_setting(
    client: httpx.AsyncClient, db: object, without_contained_index: None
) -> None:
    container = await create(client, medication_request(medication(unique(), id="m1")))
    count = await db.fetchval(  # type: ignore[attr-defined]
        "SELECT count(*) FROM search_contained WHERE resource_type = 'MedicationRequest' AND resource_id = $1",
        container["id"],
    )
    assert count == 0


def contained_matches(bundle: dict) -> dict[str, dict]:
    """fullUrl -> resource of each match of a searchset."""
    return {e["fullUrl"]: e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


async def test_contained_type_contained_returns_the_contained_resources_under_their_containers_url(
    client: httpx.AsyncClient,
) -> None:
    code = unique()
    container = await create(client, medication_request(medication(code, id="m1")))
    await create(client, medication(code))  # standalone: not contained
    bundle = await search(
        client, "/Medication", [("code", code), ("_contained", "true"), ("_containedType", "contained")]
    )
    [(full_url, resource)] = contained_matches(bundle).items()
    assert full_url.endswith(f"/MedicationRequest/{container['id']}#m1")
    assert resource == container["contained"][0]
    assert bundle["total"] == 1


async def test_contained_type_contained_returns_only_the_matching_contained_resource(
    client: httpx.AsyncClient,
) -> None:
    code = unique()
    container = await create(client, medication_request(medication(code, id="m1"), medication(unique(), id="m2")))
    bundle = await search(
        client, "/Medication", [("code", code), ("_contained", "true"), ("_containedType", "contained")]
    )
    assert [(r["resourceType"], r["id"]) for r in contained_matches(bundle).values()] == [("Medication", "m1")]
    assert next(iter(contained_matches(bundle))).endswith(f"/MedicationRequest/{container['id']}#m1")


async def test_contained_both_with_contained_type_contained_returns_resources_and_contained_resources(
    client: httpx.AsyncClient,
) -> None:
    code = unique()
    container = await create(client, medication_request(medication(code, id="m1")))
    standalone = await create(client, medication(code))
    bundle = await search(
        client, "/Medication", [("code", code), ("_contained", "both"), ("_containedType", "contained")]
    )
    urls = sorted(contained_matches(bundle))
    assert len(urls) == 2
    wanted = sorted([f"/MedicationRequest/{container['id']}#m1", f"/Medication/{standalone['id']}"])
    assert all(any(url.endswith(w) for url in urls) for w in wanted)
    assert {(r["resourceType"], r["id"]) for r in contained_matches(bundle).values()} == {
        ("Medication", "m1"),
        ("Medication", standalone["id"]),
    }


async def test_contained_type_contained_pages_through_contained_resources(client: httpx.AsyncClient) -> None:
    code = unique()
    made = {(await create(client, medication_request(medication(code, id="m1"))))["id"] for _ in range(3)}
    standalone = await create(client, medication(code))
    params = [("code", code), ("_contained", "both"), ("_containedType", "contained"), ("_count", "2")]
    bundle = await search(client, "/Medication", params)
    pages = [bundle]
    while (following := link(bundle, "next")) is not None:
        res = await client.get(following)
        assert res.status_code == 200, res.text
        bundle = res.json()
        pages.append(bundle)
    seen = [url for page in pages for url in contained_matches(page)]
    assert len(pages) == 2 and len(seen) == len(set(seen)) == 4
    assert {url.rsplit("/", 1)[-1] for url in seen} == {f"{rid}#m1" for rid in made} | {standalone["id"]}
    previous = link(pages[-1], "previous") or link(pages[-1], "prev")
    assert previous is not None
    res = await client.get(previous)
    assert res.status_code == 200, res.text
    assert list(contained_matches(res.json())) == list(contained_matches(pages[0]))


async def test_contained_type_contained_counts_contained_resources(client: httpx.AsyncClient) -> None:
    code = unique()
    await create(client, medication_request(medication(code, id="m1")))
    await create(client, medication_request(medication(code, id="m1")))
    params = [("code", code), ("_contained", "true"), ("_containedType", "contained")]
    assert (await search(client, "/Medication", [*params, ("_summary", "count")]))["total"] == 2
    assert (await search(client, "/Medication", [*params, ("_count", "1"), ("_total", "accurate")]))["total"] == 2


async def test_contained_type_contained_leaves_out_deleted_containers(client: httpx.AsyncClient) -> None:
    code = unique()
    container = await create(client, medication_request(medication(code, id="m1")))
    assert (await client.delete(f"/MedicationRequest/{container['id']}")).status_code in (200, 204)
    params = [("code", code), ("_contained", "true"), ("_containedType", "contained")]
    assert contained_matches(await search(client, "/Medication", params)) == {}


async def test_contained_type_contained_with_include_is_refused_as_not_supported(client: httpx.AsyncClient) -> None:
    params = {"_contained": "true", "_containedType": "contained", "_include": "Medication:manufacturer"}
    res = await client.get("/Medication", params=params)
    assert res.status_code == 400
    assert res.json()["issue"][0]["code"] == "not-supported"


async def test_contained_type_without_contained_changes_nothing(client: httpx.AsyncClient) -> None:
    code = unique()
    await create(client, medication_request(medication(code, id="m1")))
    standalone = await create(client, medication(code))
    assert await ids_of(client, "/Medication", [("code", code), ("_containedType", "contained")]) == {standalone["id"]}


async def test_contained_type_contained_applies_elements_to_the_contained_resource(client: httpx.AsyncClient) -> None:
    code = unique()
    await create(client, medication_request(medication(code, unique(), id="m1")))
    params = [("code", code), ("_contained", "true"), ("_containedType", "contained"), ("_elements", "code")]
    [resource] = contained_matches(await search(client, "/Medication", params)).values()
    assert resource["id"] == "m1" and resource["code"]["coding"][0]["code"] == code and "form" not in resource


async def test_contained_type_contained_estimates_its_total(client: httpx.AsyncClient) -> None:
    code = unique()
    await create(client, medication_request(medication(code, id="m1")))
    params = [("code", code), ("_contained", "true"), ("_containedType", "contained"), ("_total", "estimate")]
    assert isinstance((await search(client, "/Medication", params))["total"], int)


async def test_contained_search_needs_read_access_to_every_type(app) -> None:
    """The containers come back whatever their type: a caller limited to some types may not search them."""
    from headless_ehr.auth.principal import Principal
    from headless_ehr.fhir.outcome import FhirError

    medication_only = Principal.from_scopes("Practitioner/1", "user/Medication.rs user/*.cud")
    with pytest.raises(FhirError) as refused:
        await app.state.store.search(medication_only, "Medication", [("code", unique()), ("_contained", "true")])
    assert refused.value.status == 403
    page = await app.state.store.search(medication_only, "Medication", [("code", unique())])  # plain search: allowed
    assert page.entries == []


async def test_contained_search_in_a_compartment_is_refused(client: httpx.AsyncClient) -> None:
    res = await client.get("/Patient/p1/Medication", params={"code": unique(), "_contained": "true"})
    assert res.status_code == 400
    assert res.json()["resourceType"] == "OperationOutcome"
