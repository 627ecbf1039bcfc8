"""Bad AuditEvent search input is a 400 OperationOutcome, never a 500."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("name", ["patient", "agent", "entity", "subtype", "outcome", "action", "address", "_id"])
async def test_a_nul_in_an_audit_search_parameter_is_a_400(client, name):
    response = await client.get("/AuditEvent", params={name: "a\x00b"})
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
