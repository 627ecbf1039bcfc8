"""A SearchParameter POSTed to the server becomes searchable after $reindex."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from headless_ehr.store import reindex

FHIR_JSON = "application/fhir+json"


@pytest.fixture(autouse=True)
def fast_registry(monkeypatch):
    monkeypatch.setattr(reindex, "REGISTRY_POLL_SECONDS", 0.05)


def marital_param(code: str) -> dict:
    return {
        "resourceType": "SearchParameter",
        "url": f"http://example.org/SearchParameter/{code}",
        "name": code,
        "status": "active",
        "description": "marital status",
        "code": code,
        "base": ["Patient"],
        "type": "token",
        "expression": "Patient.maritalStatus",
    }


async def wait_for(client, status_url: str) -> dict:
    for _ in range(200):
        res = await client.get(status_url)
        values = {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in res.json()["parameter"]}
        if values["status"] != "running":
            return values
        await asyncio.sleep(0.05)
    raise AssertionError("reindex did not finish")


async def test_custom_search_parameter_is_searchable_only_after_reindex(client):
    code = f"marital-{uuid.uuid4().hex[:6]}"
    status = uuid.uuid4().hex[:8]
    patient = {
        "resourceType": "Patient",
        "maritalStatus": {"coding": [{"system": "urn:test", "code": status}]},
    }
    created = (await client.post("/Patient", json=patient, headers={"Content-Type": FHIR_JSON})).json()
    await client.post("/SearchParameter", json=marital_param(code), headers={"Content-Type": FHIR_JSON})

    before = await client.get(f"/Patient?{code}={status}", headers={"Prefer": "handling=strict"})
    assert before.status_code == 400

    started = await client.post("/Patient/$reindex")
    assert started.status_code == 202
    result = await wait_for(client, started.headers["content-location"].replace("http://testserver/fhir", ""))
    assert result["status"] == "completed"
    assert result["processed"] >= 1

    after = (await client.get(f"/Patient?{code}=urn:test|{status}")).json()
    assert [e["resource"]["id"] for e in after["entry"]] == [created["id"]]


async def test_instance_reindex_answers_directly(client):
    created = (
        await client.post("/Patient", json={"resourceType": "Patient"}, headers={"Content-Type": FHIR_JSON})
    ).json()
    res = await client.post(f"/Patient/{created['id']}/$reindex")
    assert res.status_code == 200
    assert (await client.post("/Patient/not-there/$reindex")).status_code == 404


async def test_unknown_job_is_404(client):
    assert (await client.get("/$reindex?job=nope")).status_code == 404
