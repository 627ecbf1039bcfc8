"""Access policies, found in review: bad policy documents are 400s; a patch cannot read
hidden elements (it is applied to the resource as the caller sees it); a search cannot match on them."""

from __future__ import annotations

import orjson
import pytest

from tests.auth.test_policies_admin import admin, name, ward_nurse  # noqa: F401
from tests.auth.test_policies_enforcement import assign, nurse, policy_name, ward, with_interactions  # noqa: F401
from tests.auth.world import observation

JSON_PATCH = {"Content-Type": "application/json-patch+json"}


@pytest.mark.parametrize("rtype", [[], {}, [["Patient"]], {"a": 1}])
async def test_a_resource_type_that_is_no_string_is_400(admin, rtype):  # noqa: F811
    document = {"name": name(), "rules": [{"resourceType": rtype, "interactions": ["read"]}]}
    res = await admin.post("/policies", json=document)
    assert res.status_code == 400 and res.json()["resourceType"] == "OperationOutcome"


async def test_a_patch_cannot_copy_a_hidden_element_into_a_visible_one(assign, ward, client):  # noqa: F811
    user = await assign(with_interactions(ward_nurse(policy_name()), "Observation", "patch"))
    patch = [{"op": "copy", "from": "/note/0/text", "path": "/valueString"}]
    res = await user.patch(f"/Observation/{ward.vitals_a}", content=orjson.dumps(patch), headers=JSON_PATCH)
    assert res.status_code == 422, res.text
    assert "valueString" not in (await client.get(f"/Observation/{ward.vitals_a}")).json()


async def test_a_patch_test_op_cannot_probe_a_hidden_element(assign, ward):  # noqa: F811
    user = await assign(with_interactions(ward_nurse(policy_name()), "Observation", "patch"))
    patch = [{"op": "test", "path": "/note/0/text", "value": "secret note"}]
    res = await user.patch(f"/Observation/{ward.vitals_a}", content=orjson.dumps(patch), headers=JSON_PATCH)
    assert res.status_code == 422, res.text


async def test_a_search_on_a_hidden_elements_text_is_403(nurse, ward):  # noqa: F811
    res = await nurse.get("/Observation", params={"_content": "secret note"})
    assert res.status_code == 403 and "note" in res.text


async def test_a_search_parameter_over_a_hidden_element_is_403(assign, ward):  # noqa: F811
    document = ward_nurse(policy_name())
    document["rules"][1]["hiddenElements"] = ["encounter"]
    user = await assign(document)
    res = await user.get("/Observation", params={"encounter": f"Encounter/{ward.encounter_a}"})
    assert res.status_code == 403 and "encounter" in res.text


async def test_a_chain_into_a_hidden_element_is_403(assign, ward):  # noqa: F811
    document = ward_nurse(policy_name())
    document["rules"][1]["hiddenElements"] = ["encounter"]
    user = await assign(document)
    res = await user.get("/Patient", params={"_has:Observation:subject:encounter": f"Encounter/{ward.encounter_a}"})
    assert res.status_code == 403 and "encounter" in res.text


async def test_a_search_on_visible_elements_is_unchanged(nurse, ward):  # noqa: F811
    res = await nurse.get("/Observation", params={"_id": ward.vitals_a, "category": "vital-signs"})
    assert res.status_code == 200 and res.json()["total"] == 1


async def test_a_search_parameter_over_a_hidden_choice_element_is_403(assign, ward):  # noqa: F811
    document = ward_nurse(policy_name())
    document["rules"][1]["hiddenElements"] = ["valueQuantity"]
    user = await assign(document)
    res = await user.get("/Observation", params={"value-quantity": "gt1"})
    assert res.status_code == 403 and "valueQuantity" in res.text


async def test_sorting_on_a_hidden_element_is_403(assign, ward):  # noqa: F811
    document = ward_nurse(policy_name())
    document["rules"][0]["hiddenElements"] = ["birthDate"]
    user = await assign(document)
    res = await user.get("/Patient", params={"_sort": "-birthdate"})
    assert res.status_code == 403 and "birthDate" in res.text


async def test_conditional_criteria_on_a_hidden_element_are_403(nurse, ward):  # noqa: F811
    headers = {"Content-Type": "application/fhir+json", "If-None-Exist": "_content=secret note"}
    res = await nurse.post("/Observation", json=observation(ward.a, "vital-signs", "x"), headers=headers)
    assert res.status_code == 403 and "note" in res.text
