"""Every write path refuses a narrative that breaks txt-1/txt-2 or the size limit; nothing is stored."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from headless_ehr.auth.principal import SYSTEM
from headless_ehr.bulk.importer import Importer

FHIR_JSON = {"Content-Type": "application/fhir+json"}
XHTML = "http://www.w3.org/1999/xhtml"
SCRIPT = f'<div xmlns="{XHTML}">Hi<script>alert(document.cookie)</script></div>'


def patient(rid: str, div: str) -> dict:
    return {"resourceType": "Patient", "id": rid, "text": {"status": "generated", "div": div}}


def expressions(outcome: dict) -> set[str]:
    return {e for issue in outcome["issue"] for e in issue.get("expression", [])}


async def test_create_with_script_is_422_naming_the_div(client):
    res = await client.post("/Patient", json=patient("x", SCRIPT), headers=FHIR_JSON)
    assert res.status_code == 422
    outcome = res.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Patient.text.div" in expressions(outcome)


async def test_update_with_script_stores_nothing(client):
    rid = uuid.uuid4().hex
    res = await client.put(f"/Patient/{rid}", json=patient(rid, SCRIPT), headers=FHIR_JSON)
    assert res.status_code == 422
    assert (await client.get(f"/Patient/{rid}")).status_code == 404


async def test_contained_narrative_is_checked_on_write(client):
    contained = {"resourceType": "Organization", "id": "o", "text": {"status": "generated", "div": SCRIPT}}
    body = {
        "resourceType": "Patient",
        "contained": [contained],
        "managingOrganization": {"reference": "#o"},
    }
    res = await client.post("/Patient", json=body, headers=FHIR_JSON)
    assert res.status_code == 422
    assert "Patient.contained[0].text.div" in expressions(res.json())


async def test_transaction_with_script_fails_whole(client):
    rid, good = uuid.uuid4().hex, uuid.uuid4().hex
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": patient(good, f'<div xmlns="{XHTML}">fine</div>'),
                "request": {"method": "PUT", "url": f"Patient/{good}"},
            },
            {"resource": patient(rid, SCRIPT), "request": {"method": "PUT", "url": f"Patient/{rid}"}},
        ],
    }
    res = await client.post("", json=bundle, headers=FHIR_JSON)
    assert 400 <= res.status_code < 500
    assert res.json()["resourceType"] == "OperationOutcome"
    assert (await client.get(f"/Patient/{good}")).status_code == 404
    assert (await client.get(f"/Patient/{rid}")).status_code == 404


async def test_batch_entry_with_script_fails_alone(client):
    rid = uuid.uuid4().hex
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": patient(rid, SCRIPT), "request": {"method": "PUT", "url": f"Patient/{rid}"}}],
    }
    res = await client.post("", json=bundle, headers=FHIR_JSON)
    assert res.status_code == 200
    assert res.json()["entry"][0]["response"]["status"].startswith("422")
    assert (await client.get(f"/Patient/{rid}")).status_code == 404


async def test_validate_operation_reports_the_narrative(client):
    res = await client.post("/Patient/$validate", json=patient("v", SCRIPT), headers=FHIR_JSON)
    assert res.status_code == 200
    issues = res.json()["issue"]
    assert any(i["severity"] == "error" and "Patient.text.div" in i.get("expression", []) for i in issues)


async def test_import_reports_the_narrative_and_loads_the_rest(app, client, tmp_path):
    good, bad = uuid.uuid4().hex, uuid.uuid4().hex
    lines = [patient(good, f'<div xmlns="{XHTML}">fine</div>'), patient(bad, SCRIPT)]
    source = tmp_path / "narratives.ndjson"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    report = await Importer(app.state.pool, app.state.store, SYSTEM).run([source])
    assert report.resources == 1
    assert [f.unit for f in report.failures] == ["line 2"]
    assert (await client.get(f"/Patient/{bad}")).status_code == 404


@pytest.fixture
async def small_narrative_client(app_with) -> httpx.AsyncClient:
    """A server configured with EHR_MAX_NARRATIVE_BYTES=200."""
    return await app_with(max_narrative_bytes=200)


async def test_narrative_over_the_configured_limit_is_422_too_long(small_narrative_client):
    div = f'<div xmlns="{XHTML}">{"x" * 300}</div>'
    res = await small_narrative_client.post("/Patient", json=patient("big", div), headers=FHIR_JSON)
    assert res.status_code == 422
    issue = res.json()["issue"][0]
    assert issue["code"] == "too-long" and issue["expression"] == ["Patient.text.div"]
    small = f'<div xmlns="{XHTML}">{"x" * 100}</div>'
    assert (
        await small_narrative_client.post("/Patient", json=patient("s", small), headers=FHIR_JSON)
    ).status_code == 201


def test_limit_comes_from_the_environment(monkeypatch):
    from headless_ehr.config import Settings

    monkeypatch.setenv("EHR_MAX_NARRATIVE_BYTES", "4096")
    assert Settings.from_env().max_narrative_bytes == 4096
    monkeypatch.delenv("EHR_MAX_NARRATIVE_BYTES")
    assert Settings.from_env().max_narrative_bytes == 1024 * 1024
