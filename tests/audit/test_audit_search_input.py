"""Bad AuditEvent search input is a 400 OperationOutcome, never a 500."""

from __future__ import annotations

import base64

import pytest


@pytest.mark.parametrize("name", ["patient", "agent", "entity", "subtype", "outcome", "action", "address", "_id"])
async def test_a_nul_in_an_audit_search_parameter_is_a_400(client, name):
    response = await client.get("/AuditEvent", params={name: "a\x00b"})
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("payload", [b"18446744073709551615", b"-9223372036854775809", b"true"])
async def test_a_crafted_audit_cursor_outside_the_seq_range_is_a_400(client, payload):
    cursor = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    response = await client.get("/AuditEvent", params={"_cursor": cursor})
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["diagnostics"] == "malformed paging cursor"


async def test_an_audit_search_post_that_is_not_a_form_is_a_415(client):
    for content_type in ("multipart/form-data", "application/json"):
        response = await client.post("/AuditEvent/_search", content=b"{}", headers={"content-type": content_type})
        assert response.status_code == 415, response.text
        assert response.json()["resourceType"] == "OperationOutcome"


async def test_an_audit_search_post_reads_its_form_criteria(client, app):
    await app.state.audit.flush()
    body = b"_count=1&_sort=-date"
    response = await client.post(
        "/AuditEvent/_search", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["entry"]) == 1


@pytest.mark.parametrize("value", ["ne2026-01-01", "sa2026-01-01", "eb2026-01-01", "ap2026-01-01"])
async def test_an_audit_date_prefix_other_than_eq_gt_ge_lt_le_is_not_supported(client, value):
    response = await client.get("/AuditEvent", params={"date": value})
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["code"] == "not-supported"
