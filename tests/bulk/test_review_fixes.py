"""Regressions found reviewing the merged issue-9 slices: `ehr import` and the local base."""

from __future__ import annotations

import json
import uuid

from headless_ehr.auth.principal import SYSTEM
from headless_ehr.bulk.importer import Importer


async def test_import_treats_only_the_configured_base_as_local(app, client, tmp_path):
    """Without EHR_PUBLIC_BASE_URL no absolute URL is ours on import: a bundle's
    `http://localhost/fhir/Patient/1` is another server's Patient, as it is for the
    store's own extraction, never rewritten to our Patient/1."""
    patient = await client.post("/Patient", json={"resourceType": "Patient"})
    pid, code = patient.json()["id"], uuid.uuid4().hex
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "urn:x", "code": code}]},
        "subject": {"reference": f"http://localhost/fhir/Patient/{pid}"},
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": observation, "request": {"method": "POST", "url": "Observation"}}],
    }
    source = tmp_path / "bundle.json"
    source.write_text(json.dumps(bundle))
    report = await Importer(app.state.pool, app.state.store, SYSTEM).run([source])
    assert report.resources == 1 and not report.failures
    local = await client.get("/Observation", params={"subject": f"Patient/{pid}", "code": f"urn:x|{code}"})
    assert local.json()["total"] == 0
    stored = await client.get("/Observation", params={"code": f"urn:x|{code}"})
    assert stored.json()["entry"][0]["resource"]["subject"]["reference"] == f"http://localhost/fhir/Patient/{pid}"
