"""Access policies, found in review: bad policy documents are 400s; a patch cannot read
hidden elements (it is applied to the resource as the caller sees it)."""

from __future__ import annotations

import pytest

from tests.auth.test_policies_admin import admin, name, ward_nurse  # noqa: F401


@pytest.mark.parametrize("rtype", [[], {}, [["Patient"]], {"a": 1}])
async def test_a_resource_type_that_is_no_string_is_400(admin, rtype):  # noqa: F811
    document = {"name": name(), "rules": [{"resourceType": rtype, "interactions": ["read"]}]}
    res = await admin.post("/policies", json=document)
    assert res.status_code == 400 and res.json()["resourceType"] == "OperationOutcome"
