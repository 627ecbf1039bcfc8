"""Token `:in`, `:not-in`, `:above` and `:below` against the R4 value sets and code
systems the server ships (http://hl7.org/fhir/R4/search.html#token): `:in` matches a
code in the value set's expansion, `:not-in` resources with no code in it (also those
with no code at all), `:below`/`:above` a code and what it subsumes / is subsumed by."""

from __future__ import annotations

import httpx

from .searching import create, ids_of, unique

CATEGORY_VS = "http://hl7.org/fhir/ValueSet/observation-category"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def observation(code: str, *, category: tuple[str, str] | None = None, coding: tuple[str, str] | None = None) -> dict:
    codings = [{"system": "http://example.org/codes", "code": code}]
    if coding is not None:
        codings.append({"system": coding[0], "code": coding[1]})
    resource: dict = {"resourceType": "Observation", "status": "final", "code": {"coding": codings}}
    if category is not None:
        resource["category"] = [{"coding": [{"system": category[0], "code": category[1]}]}]
    return resource


async def test_in_matches_codes_of_the_value_set(client: httpx.AsyncClient) -> None:
    tag = unique()
    vital = await create(client, observation(tag, category=(CATEGORY, "vital-signs")))
    await create(client, observation(tag, category=("http://example.org/other", "vital-signs")))
    await create(client, observation(tag))
    found = await ids_of(client, "/Observation", [("code", tag), ("category:in", CATEGORY_VS)])
    assert found == {vital["id"]}


async def test_not_in_matches_resources_without_a_code_in_the_value_set(client: httpx.AsyncClient) -> None:
    tag = unique()
    await create(client, observation(tag, category=(CATEGORY, "laboratory")))
    other = await create(client, observation(tag, category=("http://example.org/other", "laboratory")))
    bare = await create(client, observation(tag))
    found = await ids_of(client, "/Observation", [("code", tag), ("category:not-in", CATEGORY_VS)])
    assert found == {other["id"], bare["id"]}


async def test_in_on_a_required_code_uses_the_expansion(client: httpx.AsyncClient) -> None:
    family = unique()
    male = await create(client, {"resourceType": "Patient", "name": [{"family": family}], "gender": "male"})
    await create(client, {"resourceType": "Patient", "name": [{"family": family}]})
    found = await ids_of(
        client, "/Patient", [("family", family), ("gender:in", "http://hl7.org/fhir/ValueSet/administrative-gender")]
    )
    assert found == {male["id"]}


async def test_in_with_an_unknown_value_set_is_refused_naming_it(client: httpx.AsyncClient) -> None:
    url = f"http://{unique()}.org/ValueSet/none"
    res = await client.get("/Observation", params={"category:in": url})
    assert res.status_code == 400
    assert url in res.json()["issue"][0]["diagnostics"]


async def test_below_matches_the_code_and_its_descendants(client: httpx.AsyncClient) -> None:
    tag = unique()
    group = await create(client, observation(tag, coding=(ACT_CODE, "_ActEncounterCode")))
    child = await create(client, observation(tag, coding=(ACT_CODE, "AMB")))
    await create(client, observation(tag, coding=(ACT_CODE, "DRUG")))  # another branch
    await create(client, observation(tag, coding=(ACT_CODE, "_ActCareProvisionCode")))  # the parent
    found = await ids_of(
        client,
        "/Observation",
        [("code", f"http://example.org/codes|{tag}"), ("code:below", f"{ACT_CODE}|_ActEncounterCode")],
    )
    assert found == {group["id"], child["id"]}


async def test_above_matches_the_code_and_its_ancestors(client: httpx.AsyncClient) -> None:
    tag = unique()
    child = await create(client, observation(tag, coding=(ACT_CODE, "AMB")))
    group = await create(client, observation(tag, coding=(ACT_CODE, "_ActEncounterCode")))
    root = await create(client, observation(tag, coding=(ACT_CODE, "_ActCareProvisionCode")))
    await create(client, observation(tag, coding=(ACT_CODE, "EMER")))  # a sibling
    found = await ids_of(
        client, "/Observation", [("code", f"http://example.org/codes|{tag}"), ("code:above", f"{ACT_CODE}|AMB")]
    )
    assert found == {child["id"], group["id"], root["id"]}


async def test_below_needs_a_system(client: httpx.AsyncClient) -> None:
    res = await client.get("/Observation", params={"code:below": "AMB"})
    assert res.status_code == 400


async def test_below_in_an_unknown_code_system_is_refused_naming_it(client: httpx.AsyncClient) -> None:
    system = f"http://{unique()}.org/cs"
    res = await client.get("/Observation", params={"code:below": f"{system}|x"})
    assert res.status_code == 400
    assert system in res.json()["issue"][0]["diagnostics"]


async def test_below_in_a_code_system_not_shipped_in_full_is_refused(client: httpx.AsyncClient) -> None:
    res = await client.get("/Observation", params={"code:below": "http://snomed.info/sct|404684003"})
    assert res.status_code == 400
    assert "http://snomed.info/sct" in res.json()["issue"][0]["diagnostics"]


async def test_unknown_value_sets_and_systems_leave_the_terminology_cache_as_it_was(client):
    from headless_ehr.fhir.definitions import definitions
    from headless_ehr.fhir.validation.valuesets import resolver_for

    resolver = resolver_for(definitions())
    before = (len(resolver._cache), len(resolver._hierarchies))
    for i in range(20):  # a client inventing URLs must not grow a process-wide cache
        res = await client.get("/Patient", params={"gender:in": f"http://example.org/vs/{unique()}{i}"})
        assert res.status_code == 400
        res = await client.get("/Observation", params={"code:below": f"http://example.org/cs/{unique()}|a"})
        assert res.status_code == 400
    assert (len(resolver._cache), len(resolver._hierarchies)) == before
