"""Access policies, found in review: bad policy documents are 400s; a patch cannot read
hidden elements (it is applied to the resource as the caller sees it)."""

from __future__ import annotations

import orjson
import pytest

from tests.auth.test_policies_admin import admin, name, ward_nurse  # noqa: F401
from tests.auth.test_policies_enforcement import assign, policy_name, ward, with_interactions  # noqa: F401

JSON_PATCH = {"Content-Type": "application/json-patch+json"}


@pytest.mark.parametrize("rtype", [[], {}, [["Patient"]], {"a": 1}])
async def test_a_resource_type_that_is_no_string_is_400(admin, rtype):  # noqa: F811
    document = {"name": name(), "rules": [{"resourceType": rtype, "interactions": ["read"]}]}
    res = await admin.post("/policies", json=document)
    assert res.status_code == 400 and res.json()["resourceType"] == "OperationOutcome"


async def test_a_patch_cannot_copy_a_hidden_element_into_a_visible_one(assign, ward, client):  # noqa: F811
    nurse = await assign(with_interactions(ward_nurse(policy_name()), "Observation", "patch"))
    patch = [{"op": "copy", "from": "/note/0/text", "path": "/valueString"}]
    res = await nurse.patch(f"/Observation/{ward.vitals_a}", content=orjson.dumps(patch), headers=JSON_PATCH)
    assert res.status_code == 422, res.text
    assert "valueString" not in (await client.get(f"/Observation/{ward.vitals_a}")).json()


async def test_a_patch_test_op_cannot_probe_a_hidden_element(assign, ward):  # noqa: F811
    nurse = await assign(with_interactions(ward_nurse(policy_name()), "Observation", "patch"))
    patch = [{"op": "test", "path": "/note/0/text", "value": "secret note"}]
    res = await nurse.patch(f"/Observation/{ward.vitals_a}", content=orjson.dumps(patch), headers=JSON_PATCH)
    assert res.status_code == 422, res.text
