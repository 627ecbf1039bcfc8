"""Admins search the audit trail with the normal search API; patients see who looked at their record."""

from __future__ import annotations

import uuid

from .test_audit_events import new_patient


async def _search(client, app, **params):
    await app.state.audit.flush()
    response = await client.get("/AuditEvent", params=params)
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "searchset"
    return bundle


def _subtypes(bundle) -> list[str]:
    return [e["resource"]["subtype"][0]["code"] for e in bundle["entry"]]


async def test_a_system_client_finds_the_events_about_a_patient(client, app):
    pid = await new_patient(client)
    await client.get(f"/Patient/{pid}")
    bundle = await _search(client, app, patient=pid)
    assert _subtypes(bundle) == ["create", "read"]
    assert all(e["fullUrl"].endswith("/AuditEvent/" + e["resource"]["id"]) for e in bundle["entry"])


async def test_search_by_agent_subtype_outcome_and_date(client, client_for, app):
    pid = await new_patient(client)
    user = f"Practitioner/{uuid.uuid4().hex[:10]}"
    nurse = await client_for("user/Observation.rs", fhirUser=user)
    await nurse.get(f"/Patient/{pid}")  # 403
    bundle = await _search(client, app, patient=pid, agent=user)
    assert _subtypes(bundle) == ["read"]
    assert bundle["entry"][0]["resource"]["outcome"] == "4"
    # (these searches are audited too, as search-type events about the patient)
    crud = "read,create"
    assert _subtypes(await _search(client, app, patient=pid, outcome="0", subtype=crud)) == ["create"]
    assert _subtypes(await _search(client, app, patient=pid, subtype=crud)) == ["create", "read"]
    today = (await _search(client, app, patient=pid))["entry"][0]["resource"]["recorded"][:10]
    assert len((await _search(client, app, patient=pid, subtype=crud, date=today))["entry"]) == 2
    assert len((await _search(client, app, patient=pid, date="lt2000-01-01"))["entry"]) == 0
    assert len((await _search(client, app, patient=pid, subtype=crud, date=f"ge{today}"))["entry"]) == 2


async def test_searches_page_by_cursor_and_sort_newest_first(client, app):
    pid = await new_patient(client)
    for _ in range(3):
        await client.get(f"/Patient/{pid}")
    first = await _search(client, app, patient=pid, _count="2", _sort="-date")
    assert _subtypes(first) == ["read", "read"]
    [following] = [link["url"] for link in first["link"] if link["relation"] == "next"]
    second = (await client.get(following)).json()
    assert _subtypes(second) == ["read", "create"]
    assert not [link for link in second["link"] if link["relation"] == "next"]


async def test_an_audit_event_is_read_by_its_id(client, app):
    pid = await new_patient(client)
    [entry] = (await _search(client, app, patient=pid))["entry"]
    response = await client.get(f"/AuditEvent/{entry['resource']['id']}")
    assert response.status_code == 200
    assert response.json() == entry["resource"]
    assert (await client.get(f"/AuditEvent/{uuid.uuid4()}")).status_code == 404


async def test_an_unsupported_parameter_is_a_clear_400(client):
    response = await client.get("/AuditEvent", params={"policy": "x"})
    assert response.status_code == 400
    assert "supported:" in response.json()["issue"][0]["diagnostics"]


async def test_a_user_token_without_system_scope_may_not_read_audit_events(client_for):
    practitioner = await client_for("user/*.rs", fhirUser="Practitioner/curious")
    assert (await practitioner.get("/AuditEvent")).status_code == 403


async def test_a_patient_token_reads_only_the_events_about_its_own_patient(client, client_for, app):
    mine, other = await new_patient(client), await new_patient(client)
    await client.get(f"/Patient/{mine}")
    patient = await client_for("patient/*.rs", patient=mine)
    await app.state.audit.flush()
    bundle = (await patient.get("/AuditEvent")).json()
    assert bundle["entry"]
    assert all(f"Patient/{mine}" in str(e["resource"]["entity"]) for e in bundle["entry"])
    assert (await patient.get("/AuditEvent", params={"patient": other})).json()["entry"] == []
    [foreign] = (await _search(client, app, patient=other, subtype="create"))["entry"]
    assert (await patient.get(f"/AuditEvent/{foreign['resource']['id']}")).status_code == 404


async def test_the_patient_compartment_holds_its_audit_events(client, app):
    pid = await new_patient(client)
    await app.state.audit.flush()
    response = await client.get(f"/Patient/{pid}/AuditEvent")
    assert response.status_code == 200
    assert [e["resource"]["subtype"][0]["code"] for e in response.json()["entry"]] == ["create"]


async def test_a_system_token_without_an_audit_event_grant_may_not_read_audit_events(client, client_for):
    pid = await new_patient(client)
    lab = await client_for("system/Observation.rs")
    assert (await lab.get("/AuditEvent", params={"patient": pid})).status_code == 403
    assert (await lab.get(f"/Patient/{pid}/AuditEvent")).status_code == 403
    some = (await client.get("/AuditEvent", params={"_count": "1"})).json()["entry"][0]["resource"]["id"]
    assert (await lab.get(f"/AuditEvent/{some}")).status_code == 403


async def test_a_system_token_with_an_audit_event_grant_reads_the_audit_log(client, client_for, app):
    pid = await new_patient(client)
    auditor = await client_for("system/AuditEvent.rs")
    await app.state.audit.flush()
    response = await auditor.get("/AuditEvent", params={"patient": pid})
    assert response.status_code == 200, response.text
    assert [e["resource"]["subtype"][0]["code"] for e in response.json()["entry"]] == ["create"]
