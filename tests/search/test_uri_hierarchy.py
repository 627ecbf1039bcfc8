"""uri and canonical parameters with `:above`/`:below` and canonical versions
(http://hl7.org/fhir/R4/search.html#uri, #reference): `:below` matches URLs under the
given one by path segment, `:above` the URLs above it, and `url|version` narrows a
canonical to a version (`:below=url|1` matches 1.2.3, `:above=url|1.2.3` matches 1)."""

from __future__ import annotations

import httpx

from .searching import create, ids_of, unique


def value_set(url: str, version: str | None = None) -> dict:
    resource = {"resourceType": "ValueSet", "status": "draft", "url": url}
    if version is not None:
        resource["version"] = version
    return resource


def questionnaire_response(canonical: str) -> dict:
    return {"resourceType": "QuestionnaireResponse", "status": "completed", "questionnaire": canonical}


async def test_uri_below_matches_urls_under_the_path(client: httpx.AsyncClient) -> None:
    base = f"http://{unique()}.org/fhir"
    child = await create(client, value_set(f"{base}/ValueSet/abc"))
    exact = await create(client, value_set(f"{base}/ValueSet"))
    await create(client, value_set(f"{base}/ValueSets/other"))  # not below: a different segment
    await create(client, value_set(f"{base}/Other/abc"))
    assert await ids_of(client, "/ValueSet", [("url:below", f"{base}/ValueSet")]) == {child["id"], exact["id"]}


async def test_uri_above_matches_the_ancestors_of_the_url(client: httpx.AsyncClient) -> None:
    base = f"http://{unique()}.org"
    root = await create(client, value_set(f"{base}/fhir"))
    parent = await create(client, value_set(f"{base}/fhir/ValueSet"))
    itself = await create(client, value_set(f"{base}/fhir/ValueSet/123"))
    await create(client, value_set(f"{base}/fhir/ValueSet/123/more"))  # below, not above
    await create(client, value_set(f"{base}/fhi"))  # a string prefix but not a segment
    found = await ids_of(client, "/ValueSet", [("url:above", f"{base}/fhir/ValueSet/123/_history/5")])
    assert found == {root["id"], parent["id"], itself["id"]}


async def test_uri_with_version_matches_the_resource_version_exactly(client: httpx.AsyncClient) -> None:
    url = f"http://{unique()}.org/fhir/ValueSet/v"
    one = await create(client, value_set(url, "1"))
    await create(client, value_set(url, "1.2.3"))
    await create(client, value_set(url, "2"))
    assert await ids_of(client, "/ValueSet", [("url", f"{url}|1")]) == {one["id"]}


async def test_uri_below_with_version_matches_later_versions_of_that_release(client: httpx.AsyncClient) -> None:
    url = f"http://{unique()}.org/fhir/ValueSet/v"
    one = await create(client, value_set(url, "1"))
    minor = await create(client, value_set(url, "1.2.3"))
    await create(client, value_set(url, "10.0"))  # `1` is not a version prefix of 10
    await create(client, value_set(url, "2.1"))
    assert await ids_of(client, "/ValueSet", [("url:below", f"{url}|1")]) == {one["id"], minor["id"]}


async def test_uri_without_version_matches_every_version(client: httpx.AsyncClient) -> None:
    url = f"http://{unique()}.org/fhir/ValueSet/v"
    one = await create(client, value_set(url, "1"))
    two = await create(client, value_set(url, "2"))
    assert await ids_of(client, "/ValueSet", [("url", url)]) == {one["id"], two["id"]}


async def test_canonical_reference_below_matches_urls_under_the_path(client: httpx.AsyncClient) -> None:
    base = f"http://{unique()}.org/fhir/Questionnaire"
    under = await create(client, questionnaire_response(f"{base}/abc"))
    await create(client, questionnaire_response(f"http://{unique()}.org/fhir/Questionnaire/abc"))
    found = await ids_of(client, "/QuestionnaireResponse", [("questionnaire:below", base)])
    assert found == {under["id"]}


async def test_canonical_reference_with_version_matches_that_version(client: httpx.AsyncClient) -> None:
    url = f"http://{unique()}.org/fhir/Questionnaire/q"
    one = await create(client, questionnaire_response(f"{url}|1"))
    await create(client, questionnaire_response(f"{url}|1.2.3"))
    assert await ids_of(client, "/QuestionnaireResponse", [("questionnaire", f"{url}|1")]) == {one["id"]}


async def test_canonical_reference_below_with_version_matches_version_prefix(client: httpx.AsyncClient) -> None:
    url = f"http://{unique()}.org/fhir/Questionnaire/q"
    one = await create(client, questionnaire_response(f"{url}|1"))
    minor = await create(client, questionnaire_response(f"{url}|1.2.3"))
    await create(client, questionnaire_response(f"{url}|12"))
    await create(client, questionnaire_response(f"{url}|2.0"))
    found = await ids_of(client, "/QuestionnaireResponse", [("questionnaire:below", f"{url}|1")])
    assert found == {one["id"], minor["id"]}


async def test_canonical_reference_above_with_version_matches_earlier_prefixes(client: httpx.AsyncClient) -> None:
    url = f"http://{unique()}.org/fhir/Questionnaire/q"
    one = await create(client, questionnaire_response(f"{url}|1"))
    await create(client, questionnaire_response(f"{url}|1.3"))
    exact = await create(client, questionnaire_response(f"{url}|1.2.3"))
    found = await ids_of(client, "/QuestionnaireResponse", [("questionnaire:above", f"{url}|1.2.3")])
    assert found == {one["id"], exact["id"]}


async def test_above_on_a_reference_that_is_not_a_url_is_refused(client: httpx.AsyncClient) -> None:
    res = await client.get("/Observation", params={"subject:above": "Patient/1"})
    assert res.status_code == 400
    assert res.json()["resourceType"] == "OperationOutcome"
