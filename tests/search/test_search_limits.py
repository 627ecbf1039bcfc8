"""What one search may cost: chain branches, costly parameters, SQL size, includes per
page and statement time. Beyond a limit the answer is a 4xx (or 503 for the statement
timeout) with an OperationOutcome, or for includes a page with a warning; never a 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from .searching import FHIR_JSON, create, entries, include_keys, search, unique


def _outcome(res: httpx.Response, status: int) -> str:
    """The diagnostics of the OperationOutcome answering res, which must have status."""
    assert res.status_code == status, res.text
    body = res.json()
    assert body["resourceType"] == "OperationOutcome"
    return " ".join(i.get("diagnostics", "") for i in body["issue"])


# -- chains --------------------------------------------------------------------------


async def test_untyped_chain_through_two_any_type_references_answers_400_asking_for_a_type(client):
    # Task.subject may point at any type: two untyped hops expand to hundreds of branches
    res = await client.get("/Task", params={"subject.subject.name": "x"})
    message = _outcome(res, 400)
    assert "chain branches" in message and "subject:Patient." in message


async def test_typed_chain_on_an_any_type_reference_is_searched(client):
    family = unique()
    patient = await create(client, {"resourceType": "Patient", "name": [{"family": family}]})
    task = await create(
        client,
        {
            "resourceType": "Task",
            "status": "draft",
            "intent": "order",
            "for": {"reference": f"Patient/{patient['id']}"},
        },
    )
    bundle = await search(client, "/Task", [("subject:Patient.name", family)])
    assert [e["resource"]["id"] for e in entries(bundle, "match")] == [task["id"]]


async def test_chain_branches_are_counted_across_every_parameter_of_the_request(client):
    # Communication.recipient.identifier expands to 9 branches: three fit in 32, four do not
    three = [("recipient.identifier", unique()) for _ in range(3)]
    assert (await client.get("/Communication", params=three)).status_code == 200
    res = await client.get("/Communication", params=[*three, ("recipient.identifier", unique())])
    assert "chain branches" in _outcome(res, 400)


async def test_chain_branch_limit_follows_the_setting(app_with):
    client = await app_with(max_chain_branches=8)
    res = await client.get("/Communication", params={"recipient.identifier": "x"})
    assert "more than 8 chain branches" in _outcome(res, 400)


# -- costly parameters per request -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("_include", "Patient:general-practitioner"),
        ("_revinclude", "Observation:subject"),
        ("_has:Observation:subject:code", "x"),
        ("general-practitioner:Practitioner.name", "x"),
    ],
)
async def test_more_than_ten_of_one_costly_parameter_answers_400(client, name: str, value: str):
    assert (await client.get("/Patient", params=[(name, value)] * 10)).status_code == 200
    res = await client.get("/Patient", params=[(name, value)] * 11)
    assert "at most 10" in _outcome(res, 400)


async def test_a_search_too_large_to_send_answers_400_not_500(client):
    # each OR value is a bind argument; PostgreSQL's protocol takes at most 32767
    values = ",".join(f"c{i}" for i in range(40_000))
    res = await client.post(
        "/Observation/_search",
        content=f"code={values}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert "too large" in _outcome(res, 400)


# -- includes ----------------------------------------------------------------------------


async def _patient_with_observations(client: httpx.AsyncClient, n: int) -> str:
    patient = await create(client, {"resourceType": "Patient", "name": [{"family": unique()}]})
    for _ in range(n):
        await create(
            client,
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": f"Patient/{patient['id']}"},
            },
        )
    return patient["id"]


async def test_included_resources_beyond_the_cap_are_left_out_with_a_warning(app_with):
    client = await app_with(max_includes=3)
    pid = await _patient_with_observations(client, 5)
    bundle = await search(client, "/Patient", [("_id", pid), ("_revinclude", "Observation:subject")])
    assert len(include_keys(bundle)) == 3
    (outcome,) = entries(bundle, "outcome")
    (issue,) = outcome["resource"]["issue"]
    assert issue["severity"] == "warning" and "3 included resources" in issue["diagnostics"]


async def test_included_resources_that_exactly_fill_the_cap_give_no_warning(app_with):
    client = await app_with(max_includes=3)
    pid = await _patient_with_observations(client, 3)
    bundle = await search(client, "/Patient", [("_id", pid), ("_revinclude", "Observation:subject")])
    assert len(include_keys(bundle)) == 3
    assert entries(bundle, "outcome") == []


async def test_every_include_parameter_counts_towards_one_cap(app_with):
    client = await app_with(max_includes=3)
    org = await create(client, {"resourceType": "Organization", "name": unique()})
    pid = await _patient_with_observations(client, 2)
    await client.patch(
        f"/Patient/{pid}",
        json=[{"op": "add", "path": "/managingOrganization", "value": {"reference": f"Organization/{org['id']}"}}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    params = [("_id", pid), ("_include", "Patient:organization"), ("_revinclude", "Observation:subject")]
    bundle = await search(client, "/Patient", params)
    assert len(include_keys(bundle)) == 3 and entries(bundle, "outcome") == []
    another = await create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "y"}})
    await client.put(
        f"/Observation/{another['id']}",
        json={**another, "subject": {"reference": f"Patient/{pid}"}},
        headers={"Content-Type": FHIR_JSON},
    )
    bundle = await search(client, "/Patient", params)
    assert len(include_keys(bundle)) == 3 and len(entries(bundle, "outcome")) == 1


# -- statement timeout ---------------------------------------------------------------------


@pytest.fixture
async def many_studies(db) -> AsyncIterator[None]:
    """50,000 ResearchStudy rows with index rows of their titles, written straight to the
    tables: a title `:contains` over them takes far longer than 10 ms."""
    prefix = unique("t")
    await db.execute(
        "INSERT INTO resource (resource_type, id, version_id, last_updated, content)"
        " SELECT 'ResearchStudy', $1 || g, 1, now(), '{}'::bytea FROM generate_series(1, 50000) g",
        prefix,
    )
    await db.execute(
        "INSERT INTO search_string (resource_type, resource_id, param, value, exact)"
        " SELECT 'ResearchStudy', $1 || g, 'title', 'e' || g, 'e' || g FROM generate_series(1, 50000) g",
        prefix,
    )
    try:
        yield
    finally:
        for table, column in (("search_string", "resource_id"), ("resource", "id")):
            await db.execute(
                f"DELETE FROM {table} WHERE resource_type = 'ResearchStudy' AND {column} LIKE $1", prefix + "%"
            )


async def test_a_search_past_the_statement_timeout_answers_503_too_costly(app_with, many_studies):
    client = await app_with(statement_timeout_ms=10)
    res = await client.get("/ResearchStudy", params={"title:contains": "e"})
    message = _outcome(res, 503)
    assert res.json()["issue"][0]["code"] == "too-costly"
    assert "too expensive" in message and "10 ms" in message


async def test_the_same_search_within_the_statement_timeout_answers(app_with, many_studies):
    client = await app_with(statement_timeout_ms=60_000)
    res = await client.get("/ResearchStudy", params={"title:contains": "e", "_count": "1"})
    assert res.status_code == 200, res.text
