"""Access policies on every page shape of a search: the rows a policy opens are the same
whichever way the page is read (search/query.py: driven by an index, walking a sort
index, aggregating, counting, including), and whether the rule's patients are found
from an index or from the resource rows (search/access.py checks rules per row).

Nurse N is the general practitioner of patients A1 and A2, not of B. Her policy opens
her patients' records, of Observations only vital signs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.auth.test_policies_enforcement import admin, ids  # noqa: F401  (admin: a fixture)
from tests.auth.world import observation, post


@dataclass
class Practice:
    nurse: str = ""
    a1: str = ""
    a2: str = ""
    b: str = ""
    code: str = ""  # every Observation's code: the test's own rows
    v1: str = ""  # A1 vital sign, 2024-01-01
    v1b: str = ""  # A1 vital sign, 2024-03-01
    l1: str = ""  # A1 laboratory, 2024-02-10
    v2: str = ""  # A2 vital sign, 2024-02-01
    v2_undated: str = ""  # A2 vital sign without a date
    vb: str = ""  # B vital sign, 2024-02-15


def dated(patient: str, category: str, code: str, day: str) -> dict[str, Any]:
    return observation(patient, category, code, effectiveDateTime=f"{day}T00:00:00Z")


@pytest.fixture
async def practice(client: httpx.AsyncClient) -> Practice:
    p = Practice(code=uuid.uuid4().hex)
    p.nurse = await post(client, {"resourceType": "Practitioner", "name": [{"family": "Nurse"}]})
    other = await post(client, {"resourceType": "Practitioner", "name": [{"family": "Other"}]})
    for side, gp in (("a1", p.nurse), ("a2", p.nurse), ("b", other)):
        patient = {"resourceType": "Patient", "generalPractitioner": [{"reference": f"Practitioner/{gp}"}]}
        setattr(p, side, await post(client, patient))
    p.v1 = await post(client, dated(p.a1, "vital-signs", p.code, "2024-01-01"))
    p.v1b = await post(client, dated(p.a1, "vital-signs", p.code, "2024-03-01"))
    p.l1 = await post(client, dated(p.a1, "laboratory", p.code, "2024-02-10"))
    p.v2 = await post(client, dated(p.a2, "vital-signs", p.code, "2024-02-01"))
    undated = observation(p.a2, "vital-signs", p.code)
    del undated["effectiveDateTime"]
    p.v2_undated = await post(client, undated)
    p.vb = await post(client, dated(p.b, "vital-signs", p.code, "2024-02-15"))
    return p


def practice_policy(
    compartment: str = "Patient?general-practitioner=%fhirUser", criteria: str = "category=vital-signs"
):
    return {
        "name": f"practice-{uuid.uuid4().hex[:10]}",
        "rules": [
            {
                "resourceType": "Observation",
                "interactions": ["read", "search"],
                "criteria": criteria,
                "compartment": compartment,
            },
            {"resourceType": "*", "interactions": ["read", "search"], "compartment": compartment},
        ],
    }


@pytest.fixture
async def holder(admin: httpx.AsyncClient, client_for: Any, practice: Practice) -> Any:  # noqa: F811
    """holder(policy) -> a client of the nurse (a user holding the policy, user/*.rs)."""

    async def make(document: dict[str, Any]) -> httpx.AsyncClient:
        assert (await admin.post("/policies", json=document)).status_code == 201
        username = f"nurse-{uuid.uuid4().hex[:10]}"
        user = {
            "username": username,
            "password": "correct horse battery",
            "fhir_user": f"Practitioner/{practice.nurse}",
            "policies": [document["name"]],
        }
        assert (await admin.post("/users", json=user)).status_code == 201
        return await client_for("user/*.rs", fhirUser=f"Practitioner/{practice.nurse}", subject=username)

    return make


async def every_page(client: httpx.AsyncClient, params: dict[str, str]) -> list[str]:
    """The ids of every page of a search, in order, following `next`."""
    res = await client.get("/Observation", params=params)
    found: list[str] = []
    while True:
        assert res.status_code == 200, res.text
        bundle = res.json()
        found += [e["resource"]["id"] for e in bundle.get("entry", ())]
        following = [link["url"] for link in bundle.get("link", ()) if link["relation"] == "next"]
        if not following:
            return found
        res = await client.get(following[0])


async def test_a_sorted_search_pages_through_exactly_the_rows_the_policy_opens(holder, practice):
    nurse = await holder(practice_policy())
    found = await every_page(nurse, {"_sort": "-date", "_count": "1"})
    # the undated one last; no laboratory Observation, nothing of patient B
    assert found == [practice.v1b, practice.v2, practice.v1, practice.v2_undated]


async def test_a_search_with_several_clauses_finds_exactly_the_rows_the_policy_opens(holder, practice):
    nurse = await holder(practice_policy())
    params = {"code": f"urn:test:code|{practice.code}", "date": "ge2024-01-15"}
    assert await every_page(nurse, {**params, "_count": "1"}) == sorted([practice.v2, practice.v1b])
    res = await nurse.get("/Observation", params={**params, "_total": "accurate", "_count": "1"})
    assert res.json()["total"] == 2


async def test_an_unfiltered_page_in_id_order_holds_only_the_rows_the_policy_opens(holder, practice):
    nurse = await holder(practice_policy())
    expected = sorted([practice.v1, practice.v1b, practice.v2, practice.v2_undated])
    assert await every_page(nurse, {"code": f"urn:test:code|{practice.code}", "_count": "2"}) == expected
    res = await nurse.get("/Observation", params={"code": f"urn:test:code|{practice.code}", "_summary": "count"})
    assert res.json()["total"] == 4


async def test_revinclude_brings_only_the_rows_the_policy_opens(holder, practice):
    nurse = await holder(practice_policy())
    res = await nurse.get(
        "/Patient",
        params={"_id": f"{practice.a1},{practice.a2},{practice.b}", "_revinclude": "Observation:subject"},
    )
    assert ids(res.json(), "Patient") == {practice.a1, practice.a2}
    assert ids(res.json(), "Observation") == {practice.v1, practice.v1b, practice.v2, practice.v2_undated}


async def test_a_compartment_rule_whose_patients_are_found_without_an_index_opens_the_same_rows(holder, practice):
    # `_lastUpdated` is read from the resource row: the patients are not found from an index
    nurse = await holder(practice_policy("Patient?_lastUpdated=ge2000-01-01&general-practitioner=%fhirUser"))
    found = await every_page(nurse, {"_sort": "-date", "_count": "2"})
    assert found == [practice.v1b, practice.v2, practice.v1, practice.v2_undated]
    assert (await nurse.get(f"/Patient/{practice.b}")).status_code == 404
    assert (await nurse.get(f"/Patient/{practice.a2}")).status_code == 200


async def test_negated_rule_criteria_open_the_same_rows_on_every_page_shape(holder, practice):
    nurse = await holder(practice_policy(criteria="category:not=laboratory"))
    code = f"urn:test:code|{practice.code}"
    assert await every_page(nurse, {"code": code, "_count": "1"}) == sorted(
        [practice.v1, practice.v1b, practice.v2, practice.v2_undated]
    )
    assert await every_page(nurse, {"_sort": "date", "_count": "3"}) == [
        practice.v1,
        practice.v2,
        practice.v1b,
        practice.v2_undated,
    ]
    assert (await nurse.get(f"/Observation/{practice.l1}")).status_code == 404


async def test_rule_criteria_on_last_updated_apply_on_every_page_shape(holder, practice):
    nurse = await holder(practice_policy(criteria="_lastUpdated=ge2000-01-01"))
    code = f"urn:test:code|{practice.code}"
    every = sorted([practice.v1, practice.v1b, practice.l1, practice.v2, practice.v2_undated])
    assert await every_page(nurse, {"code": code, "_count": "2"}) == every
    found = await every_page(nurse, {"_sort": "-date", "_count": "2"})
    assert found == [practice.v1b, practice.l1, practice.v2, practice.v1, practice.v2_undated]


async def test_a_chained_search_pages_both_ways_through_exactly_the_rows_the_policy_opens(holder, practice):
    nurse = await holder(practice_policy())
    params = {"subject:Patient.general-practitioner": f"Practitioner/{practice.nurse}", "_count": "1"}
    expected = sorted([practice.v1, practice.v1b, practice.v2, practice.v2_undated])
    assert await every_page(nurse, params) == expected
    res = await nurse.get("/Observation", params={**params, "_count": "3"})
    following = next(link["url"] for link in res.json()["link"] if link["relation"] == "next")
    last = (await nurse.get(following)).json()
    assert ids(last) == {expected[3]}
    previous = next(link["url"] for link in last["link"] if link["relation"] == "previous")
    assert [e["resource"]["id"] for e in (await nurse.get(previous)).json()["entry"]] == expected[:3]
