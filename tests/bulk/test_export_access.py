"""Who may export what: scopes per type, a patient's compartment, access policies, and
the kick-off's client alone on its job."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from headless_ehr.auth import accounts
from tests.bulk.exporting import ASYNC, create, download, export, kick_off, patient_with_observations, tag, tagged, wait
from tests.conftest import bearer, mint_token


async def test_a_patient_token_exports_its_own_compartment_only(client: httpx.AsyncClient, client_for: Any):
    code, meta = tag()
    mine = await patient_with_observations(client, meta, n=2)
    other = await patient_with_observations(client, meta, n=2)
    app = await client_for("patient/*.rs", patient=mine)
    lines = await export(app, _type="Patient,Observation")
    assert [p["id"] for p in lines["Patient"]] == [mine]
    assert {o["subject"]["reference"] for o in lines["Observation"]} == {f"Patient/{mine}"}
    assert len(lines["Observation"]) == 2
    assert other != mine and code


async def test_a_patient_tokens_export_without_type_holds_its_record_not_the_shared_catalogue(
    client: httpx.AsyncClient, client_for: Any
):
    _, meta = tag()
    mine = await patient_with_observations(client, meta, n=1)
    await create(client, {"resourceType": "Practitioner", "name": [{"family": "Shared"}]})
    app = await client_for("patient/*.rs", patient=mine)
    manifest = await wait(app, await kick_off(app))
    assert {o["type"] for o in manifest["output"]} == {"Patient", "Observation"}


async def test_a_patient_token_asking_for_a_type_outside_its_record_is_403(client_for: Any):
    app = await client_for("patient/*.rs", patient="someone")
    res = await app.get("$export", params={"_type": "Practitioner"}, headers=ASYNC)
    assert res.status_code == 403


async def test_a_patient_token_at_patient_level_exports_its_own_compartment_only(
    client: httpx.AsyncClient, client_for: Any
):
    _, meta = tag()
    mine = await patient_with_observations(client, meta, n=1)
    await patient_with_observations(client, meta, n=1)
    app = await client_for("patient/*.rs", patient=mine)
    lines = await export(app, "Patient/$export", _type="Patient,Observation")
    assert [p["id"] for p in lines["Patient"]] == [mine]
    assert [o["subject"]["reference"] for o in lines["Observation"]] == [f"Patient/{mine}"]


async def test_a_type_asked_for_without_its_scope_is_403(client_for: Any):
    app = await client_for("system/Patient.rs")
    res = await app.get("$export", params={"_type": "Patient,Observation"}, headers=ASYNC)
    assert res.status_code == 403


async def test_without_type_only_the_types_in_scope_are_exported(client: httpx.AsyncClient, client_for: Any):
    _, meta = tag()
    await patient_with_observations(client, meta, n=1)
    app = await client_for("system/Patient.read")  # SMART v1
    manifest = await wait(app, await kick_off(app))
    assert {o["type"] for o in manifest["output"]} == {"Patient"}


async def test_a_v2_system_scope_exports(client: httpx.AsyncClient, client_for: Any):
    code, meta = tag()
    await patient_with_observations(client, meta, n=1)
    app = await client_for("system/*.rs")
    lines = await export(app, _type="Observation", _typeFilter=f"Observation?{tagged(code)}")
    assert len(lines["Observation"]) == 1


async def test_another_clients_job_is_not_found(client: httpx.AsyncClient, client_for: Any):
    _, meta = tag()
    await patient_with_observations(client, meta, n=1)
    status_url = await kick_off(client, _type="Patient")
    manifest = await wait(client, status_url)
    other = await client_for("system/*.rs", client_id="another-client", subject="another-client")
    assert (await other.get(status_url)).status_code == 404
    assert (await other.get(manifest["output"][0]["url"])).status_code == 404
    assert (await other.delete(status_url)).status_code == 404
    assert (await client.get(manifest["output"][0]["url"])).status_code == 200  # still there for its owner


async def test_another_patients_token_of_the_same_client_cannot_download(client: httpx.AsyncClient, client_for: Any):
    _, meta = tag()
    mine = await patient_with_observations(client, meta, n=1)
    theirs = await patient_with_observations(client, meta, n=1)
    app = await client_for("patient/*.rs", patient=mine)
    manifest = await wait(app, await kick_off(app, _type="Patient"))
    snoop = await client_for("patient/*.rs", patient=theirs)
    assert (await snoop.get(manifest["output"][0]["url"])).status_code == 404


async def test_a_download_without_a_token_is_401(client: httpx.AsyncClient, anonymous: httpx.AsyncClient):
    _, meta = tag()
    await patient_with_observations(client, meta, n=1)
    manifest = await wait(client, await kick_off(client, _type="Patient"))
    assert (await anonymous.get(manifest["output"][0]["url"])).status_code == 401


async def test_a_download_name_the_manifest_does_not_list_is_404(client: httpx.AsyncClient):
    manifest = await wait(client, await kick_off(client, _type="Patient"))
    url = manifest["output"][0]["url"]
    for name in ("../../admin-client.json", "Observation-1.ndjson", "Patient-9.ndjson"):
        assert (await client.get(url.rsplit("file=", 1)[0] + "file=" + name)).status_code == 404


# ---- access policies: hidden elements on every line -------------------------------------------


@pytest.fixture
async def admin(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The admin API as an admin client of this module's own (whatever made the database's first one)."""
    client, _ = await accounts.create_client(
        app.state.pool, "export-test-admin", scopes="system/*.*", admin=True, client_id=f"admin-{uuid.uuid4().hex[:8]}"
    )
    headers = bearer(mint_token(app, "system/*.*", client_id=client.client_id, subject=client.client_id))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver/admin", headers=headers) as c:
        yield c


async def _user_with_policy(
    admin: httpx.AsyncClient, client_for: Any, rules: list[dict[str, Any]], practitioner: str | None = None
) -> Any:
    name = f"export-{uuid.uuid4().hex[:10]}"
    assert (await admin.post("/policies", json={"name": name, "rules": rules})).status_code == 201
    practitioner = practitioner or f"Practitioner/{uuid.uuid4().hex[:8]}"
    username = f"analyst-{uuid.uuid4().hex[:10]}"
    user = {"username": username, "password": "correct horse battery", "fhir_user": practitioner, "policies": [name]}
    assert (await admin.post("/users", json=user)).status_code == 201
    return await client_for("user/*.rs", fhirUser=practitioner, subject=username)


async def test_hidden_elements_are_left_out_of_every_line(client: httpx.AsyncClient, admin: Any, client_for: Any):
    code, meta = tag()
    pid = await create(client, {"resourceType": "Patient", "meta": meta})
    await create(
        client,
        {
            "resourceType": "Observation",
            "meta": meta,
            "status": "final",
            "code": {"text": "pulse"},
            "subject": {"reference": f"Patient/{pid}"},
            "note": [{"text": "secret note"}],
        },
    )
    analyst = await _user_with_policy(
        admin,
        client_for,
        [
            {"resourceType": "*", "interactions": ["read", "search", "operation"]},
            {"resourceType": "Observation", "interactions": ["read", "search"], "hiddenElements": ["note"]},
        ],
    )
    lines = await export(analyst, _type="Observation", _typeFilter=f"Observation?{tagged(code)}")
    (obs,) = lines["Observation"]
    assert "note" not in obs and obs["status"] == "final"
    assert any(t["code"] == "SUBSETTED" for t in obs["meta"]["tag"])


async def test_a_type_filter_on_a_hidden_element_is_403(admin: Any, client_for: Any):
    analyst = await _user_with_policy(
        admin,
        client_for,
        [
            {"resourceType": "*", "interactions": ["read", "search", "operation"]},
            {"resourceType": "Patient", "interactions": ["read", "search"], "hiddenElements": ["birthDate"]},
        ],
    )
    res = await analyst.get("$export", params={"_typeFilter": "Patient?birthdate=1970"}, headers=ASYNC)
    assert res.status_code == 403


async def test_a_policy_without_the_operation_right_cannot_export(admin: Any, client_for: Any):
    analyst = await _user_with_policy(admin, client_for, [{"resourceType": "*", "interactions": ["read", "search"]}])
    res = await analyst.get("$export", params={"_type": "Patient"}, headers=ASYNC)
    assert res.status_code == 403


async def test_a_policy_criteria_rule_holds_on_every_line(client: httpx.AsyncClient, admin: Any, client_for: Any):
    code, meta = tag()
    await patient_with_observations(client, meta, n=4)  # 2 final, 2 preliminary
    analyst = await _user_with_policy(
        admin,
        client_for,
        [
            {"resourceType": "*", "interactions": ["read", "search", "operation"]},
            {"resourceType": "Observation", "interactions": ["read", "search"], "criteria": "status=final"},
        ],
    )
    lines = await export(analyst, _type="Observation", _typeFilter=f"Observation?{tagged(code)}")
    assert [o["status"] for o in lines["Observation"]] == ["final", "final"]
    assert download  # the flow helpers are shared with test_export.py


async def test_a_patients_consent_denying_the_user_holds_on_every_line(
    client: httpx.AsyncClient, admin: Any, client_for: Any
):
    code, meta = tag()
    denying = await patient_with_observations(client, meta, n=2)
    other = await patient_with_observations(client, meta, n=2)
    practitioner = await create(client, {"resourceType": "Practitioner", "name": [{"family": "Analyst"}]})
    role = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]}
    await create(
        client,
        {
            "resourceType": "Consent",
            "status": "active",
            "scope": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
            },
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{denying}"},
            "policyRule": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]
            },
            "provision": {
                "type": "deny",
                "actor": [{"role": role, "reference": {"reference": f"Practitioner/{practitioner}"}}],
            },
        },
    )
    analyst = await _user_with_policy(
        admin,
        client_for,
        [{"resourceType": "*", "interactions": ["read", "search", "operation"]}],
        practitioner=f"Practitioner/{practitioner}",
    )
    lines = await export(analyst, _type="Observation", _typeFilter=f"Observation?{tagged(code)}")
    assert {o["subject"]["reference"] for o in lines["Observation"]} == {f"Patient/{other}"}
