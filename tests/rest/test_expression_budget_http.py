"""A registered custom SearchParameter whose expression explodes cannot hang a write or
a $reindex: its evaluation stops at EHR_SEARCH_EXPRESSION_BUDGET_MS (default 100 ms)."""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from headless_ehr.store import reindex
from tests.rest.test_reindex import wait_for

FHIR_JSON = "application/fhir+json"
# cubic in the resource's size: about 7 s for 15 extensions, minutes for 40, unbounded
EXPLOSIVE = "Basic.descendants().select(%resource.descendants()).select(%resource.descendants()).count()"


@pytest.fixture(autouse=True)
def fast_registry(monkeypatch):
    monkeypatch.setattr(reindex, "REGISTRY_POLL_SECONDS", 0.05)


async def _reindex_basic(client) -> dict:
    started = await client.post("/Basic/$reindex")
    assert started.status_code == 202, started.text
    return await wait_for(client, started.headers["content-location"].replace("http://testserver/fhir", ""))


async def test_a_write_does_not_hang_on_an_explosive_custom_expression(client, caplog):
    code = f"explosive-{uuid.uuid4().hex[:6]}"
    param = {
        "resourceType": "SearchParameter",
        "url": f"http://example.org/SearchParameter/{code}",
        "name": code,
        "status": "active",
        "description": "an expression whose cost explodes",
        "code": code,
        "base": ["Basic"],
        "type": "number",
        "expression": EXPLOSIVE,
    }
    created = await client.post("/SearchParameter", json=param, headers={"Content-Type": FHIR_JSON})
    assert created.status_code == 201, created.text
    try:
        assert (await _reindex_basic(client))["status"] == "completed"
        basic = {
            "resourceType": "Basic",
            "code": {"text": "x"},
            "extension": [{"url": f"http://example.org/x{i}", "valueString": f"v{i}"} for i in range(40)],
        }
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="headless_ehr.search.extract.compile"):
            res = await client.post("/Basic", json=basic, headers={"Content-Type": FHIR_JSON})
        assert res.status_code == 201, res.text
        assert time.monotonic() - started < 10
        assert any(code in r.getMessage() and "ran past" in r.getMessage() for r in caplog.records)
    finally:  # unregister it, so later writes of Basic do not pay its budget
        await client.delete(f"/SearchParameter/{created.json()['id']}")
        assert (await _reindex_basic(client))["status"] == "completed"
