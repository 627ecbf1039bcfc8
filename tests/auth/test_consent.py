# ruff: noqa: F811 (the ward fixtures are imported, and named as parameters)
"""Patients' Consents enforced over HTTP with real tokens (docs/security.md "Consent").

The ward of tests/auth/test_policies_enforcement.py: nurse N holds an access policy that
lets her read everything; patient A's Consents decide what of A's record she sees.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.auth.test_policies_enforcement import Ward, admin, ward  # noqa: F401 (fixtures)
from tests.auth.world import FHIR_JSON, observation, post
from tests.conftest import bearer, mint_token

CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
READS = ["read", "vread", "search", "history", "operation"]


def open_policy(glass: bool = False) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": f"clinician-{uuid.uuid4().hex[:10]}",
        "rules": [{"resourceType": "*", "interactions": READS}],
    }
    if glass:
        document["breakTheGlass"] = True
    return document


def consent(patient: str, provision: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": provision,
        **extra,
    }


def actor(reference: str) -> list[dict[str, Any]]:
    role = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]}
    return [{"role": role, "reference": {"reference": reference}}]


def ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", ()) if "resource" in e}


@pytest.fixture
async def user_for(app: Any, admin: httpx.AsyncClient, ward: Ward) -> AsyncIterator[Any]:
    """user_for(policy, scope, **claims) -> a client holding a token of a new user who is the
    nurse (fhirUser Practitioner/<nurse>) with that access policy (claims: purpose_of_use, patient)."""
    opened: list[httpx.AsyncClient] = []

    async def make(policy: dict[str, Any], scope: str = "user/*.cruds", **claims: Any) -> httpx.AsyncClient:
        assert (await admin.post("/policies", json=policy)).status_code == 201
        username = f"nurse-{uuid.uuid4().hex[:10]}"
        user = {
            "username": username,
            "password": "correct horse battery",
            "fhir_user": f"Practitioner/{ward.nurse}",
            "policies": [policy["name"]],
        }
        assert (await admin.post("/users", json=user)).status_code == 201
        token = mint_token(app, scope, fhirUser=f"Practitioner/{ward.nurse}", subject=username, **claims)
        c = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver/fhir", headers=bearer(token)
        )
        opened.append(c)
        return c

    yield make
    for c in opened:
        await c.aclose()


@pytest.fixture
async def nurse(user_for: Any) -> httpx.AsyncClient:
    return await user_for(open_policy())


async def found(c: httpx.AsyncClient, url: str, params: Any = None) -> set[str]:
    res = await c.get(url, params=params)
    assert res.status_code == 200, res.text
    return ids(res.json())


async def sees_a(nurse: httpx.AsyncClient, ward: Ward) -> bool:
    """Whether the nurse reads A's vital sign (and finds it by search: both agree)."""
    read = (await nurse.get(f"/Observation/{ward.vitals_a}")).status_code
    searched = ward.vitals_a in await found(nurse, "/Observation", {"subject": f"Patient/{ward.a}"})
    assert (read == 200) == searched
    return read == 200


@pytest.fixture
async def denied(client: httpx.AsyncClient, ward: Ward) -> str:
    """A Consent of patient A denying the nurse everything."""
    return await post(client, consent(ward.a, {"type": "deny", "actor": actor(f"Practitioner/{ward.nurse}")}))


# ---- every read path --------------------------------------------------------------------


async def test_without_a_consent_the_nurse_sees_patient_a(nurse, ward):
    assert await sees_a(nurse, ward)


async def test_a_denying_consent_hides_reads_and_vreads(nurse, ward, denied):
    for url in (
        f"/Patient/{ward.a}",
        f"/Observation/{ward.vitals_a}",
        f"/Observation/{ward.vitals_a}/_history/1",
        f"/Encounter/{ward.encounter_a}",
    ):
        assert (await nurse.get(url)).status_code == 404, url
    assert (await nurse.get(f"/Observation/{ward.vitals_b}")).status_code == 200  # B has no Consent


async def test_a_denying_consent_leaves_the_data_out_of_searches(nurse, ward, denied):
    assert not await found(nurse, "/Observation", {"code": ward.lab_code, "subject": f"Patient/{ward.a}"})
    assert await found(nurse, "/Observation", {"code": ward.lab_code}) == {ward.vitals_b}
    assert ward.a not in await found(nurse, "/Patient", {"family": ward.family_a})
    everything = await found(nurse, "/", {"_type": "Observation,Condition,Patient", "_count": "1000"})
    assert not everything & {ward.a, ward.vitals_a, ward.lab_a, ward.condition_a}


async def test_a_denying_consent_leaves_the_data_out_of_sorted_searches_and_counts(nurse, ward, denied):
    sorted_ids = await found(nurse, "/Observation", {"code": ward.lab_code, "_sort": "-date"})
    assert sorted_ids == {ward.vitals_b}
    unfiltered = await found(nurse, "/Observation", {"_sort": "-date", "_count": "1000"})
    assert not unfiltered & {ward.vitals_a, ward.lab_a}
    res = await nurse.get("/Observation", params={"code": ward.lab_code, "_summary": "count"})
    assert res.json()["total"] == 1


async def test_a_denying_consent_hides_includes_and_revincludes(nurse, ward, denied):
    included = await found(nurse, "/Practitioner", {"_id": ward.nurse, "_revinclude": "Patient:general-practitioner"})
    assert included == {ward.nurse}
    included = await found(nurse, "/Observation", {"_id": ward.vitals_b, "_include": "Observation:subject"})
    assert included == {ward.vitals_b, ward.b}


async def test_a_denying_consent_hides_chains_and_has(nurse, ward, denied):
    assert not await found(nurse, "/Observation", {"subject:Patient.name": ward.family_a})
    assert not await found(nurse, "/Encounter", {"_has:Observation:encounter:code": ward.lab_code})
    assert await found(nurse, "/Patient", {"_has:Observation:subject:code": ward.lab_code}) == {ward.b}


async def test_a_denying_consent_hides_history(nurse, ward, denied):
    assert (await nurse.get(f"/Observation/{ward.vitals_a}/_history")).status_code == 404
    history = await found(nurse, "/Observation/_history", {"_count": "1000"})
    assert not history & {ward.vitals_a, ward.lab_a}


async def test_a_denying_consent_hides_everything_and_batch_reads(nurse, ward, denied):
    assert (await nurse.get(f"/Patient/{ward.a}/$everything")).status_code == 404
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Observation/{ward.vitals_a}"}},
            {"request": {"method": "GET", "url": f"Observation?subject=Patient/{ward.a}"}},
            {"request": {"method": "GET", "url": f"Observation/{ward.vitals_b}"}},
        ],
    }
    res = await nurse.post("/", json=batch, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 200, res.text
    entries = res.json()["entry"]
    assert entries[0]["response"]["status"].startswith("404")
    assert entries[1]["resource"].get("total", 0) == 0 and not entries[1]["resource"].get("entry")
    assert entries[2]["response"]["status"].startswith("200")


# ---- provisions -------------------------------------------------------------------------


async def test_a_permit_root_with_a_nested_deny_of_a_class_hides_only_that_class(nurse, ward, client):
    nested = {"type": "deny", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]}
    await post(
        client, consent(ward.a, {"type": "permit", "actor": actor(f"Practitioner/{ward.nurse}"), "provision": [nested]})
    )
    assert (await nurse.get(f"/Observation/{ward.vitals_a}")).status_code == 404
    assert (await nurse.get(f"/Patient/{ward.a}")).status_code == 200
    assert (await nurse.get(f"/Condition/{ward.condition_a}")).status_code == 200


async def test_a_nested_permit_is_an_exception_to_a_deny(nurse, ward, client):
    nested = {"type": "permit", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Patient"}]}
    await post(
        client, consent(ward.a, {"type": "deny", "actor": actor(f"Practitioner/{ward.nurse}"), "provision": [nested]})
    )
    assert (await nurse.get(f"/Patient/{ward.a}")).status_code == 200
    assert (await nurse.get(f"/Observation/{ward.vitals_a}")).status_code == 404


async def test_deny_wins_over_permit_at_the_same_depth(nurse, ward, client):
    who = actor(f"Practitioner/{ward.nurse}")
    await post(
        client, consent(ward.a, {"provision": [{"type": "permit", "actor": who}, {"type": "deny", "actor": who}]})
    )
    assert not await sees_a(nurse, ward)


async def test_a_consent_whose_root_does_not_apply_has_no_effect(nurse, ward, client):
    nested = {"type": "deny"}
    await post(
        client, consent(ward.a, {"type": "permit", "actor": actor(f"Practitioner/{ward.other}"), "provision": [nested]})
    )
    assert await sees_a(nurse, ward)


async def test_an_actor_of_someone_else_does_not_deny_the_nurse(nurse, ward, client):
    await post(client, consent(ward.a, {"type": "deny", "actor": actor(f"Practitioner/{ward.other}")}))
    assert await sees_a(nurse, ward)


async def test_a_deny_without_actor_denies_every_user(nurse, ward, client):
    await post(client, consent(ward.a, {"type": "deny"}))
    assert not await sees_a(nurse, ward)


async def test_the_actor_matches_through_the_nurses_practitioner_role(nurse, ward, client):
    role = await post(
        client, {"resourceType": "PractitionerRole", "practitioner": {"reference": f"Practitioner/{ward.nurse}"}}
    )
    await post(client, consent(ward.a, {"type": "deny", "actor": actor(f"PractitionerRole/{role}")}))
    assert not await sees_a(nurse, ward)


async def test_the_actor_matches_through_the_organization_of_her_role(nurse, ward, client):
    org = await post(client, {"resourceType": "Organization", "name": "Ward 7"})
    await post(
        client,
        {
            "resourceType": "PractitionerRole",
            "practitioner": {"reference": f"Practitioner/{ward.nurse}"},
            "organization": {"reference": f"Organization/{org}"},
        },
    )
    await post(client, consent(ward.a, {"type": "deny", "actor": actor(f"Organization/{org}")}))
    assert not await sees_a(nurse, ward)


async def test_the_actor_does_not_match_another_organization(nurse, ward, client):
    org = await post(client, {"resourceType": "Organization", "name": "Ward 8"})
    await post(client, consent(ward.a, {"type": "deny", "actor": actor(f"Organization/{org}")}))
    assert await sees_a(nurse, ward)


async def test_the_actor_matches_through_a_care_team_she_is_in(nurse, ward, client):
    team = await post(
        client,
        {"resourceType": "CareTeam", "participant": [{"member": {"reference": f"Practitioner/{ward.nurse}"}}]},
    )
    await post(client, consent(ward.a, {"type": "deny", "actor": actor(f"CareTeam/{team}")}))
    assert not await sees_a(nurse, ward)


async def test_a_code_provision_hides_the_matching_resources_only(nurse, ward, client):
    code = [{"coding": [{"system": "urn:test:code", "code": ward.lab_code}]}]
    await post(client, consent(ward.a, {"type": "deny", "code": code}))
    assert (await nurse.get(f"/Observation/{ward.vitals_a}")).status_code == 404
    assert (await nurse.get(f"/Patient/{ward.a}")).status_code == 200  # a Patient has no code


async def test_a_code_provision_of_another_code_hides_nothing(nurse, ward, client):
    await post(
        client, consent(ward.a, {"type": "deny", "code": [{"coding": [{"system": "urn:test:code", "code": "x"}]}]})
    )
    assert await sees_a(nurse, ward)


async def test_a_provision_period_around_now_applies(nurse, ward, client):
    await post(client, consent(ward.a, {"type": "deny", "period": {"start": "2020-01-01", "end": "2999-01-01"}}))
    assert not await sees_a(nurse, ward)


async def test_a_provision_period_in_the_past_does_not_apply(nurse, ward, client):
    await post(client, consent(ward.a, {"type": "deny", "period": {"start": "2020-01-01", "end": "2020-12-31"}}))
    assert await sees_a(nurse, ward)


async def test_a_data_period_hides_the_data_of_that_time(nurse, ward, client):
    # the ward's observations are effective 2024-01-01
    await post(client, consent(ward.a, {"type": "deny", "dataPeriod": {"start": "2023-12-01", "end": "2024-02-01"}}))
    assert not await sees_a(nurse, ward)
    assert (await nurse.get(f"/Patient/{ward.a}")).status_code == 200  # no care date: not data of that time


async def test_a_data_period_of_another_time_hides_nothing(nurse, ward, client):
    await post(client, consent(ward.a, {"type": "deny", "dataPeriod": {"start": "2010-01-01", "end": "2010-12-31"}}))
    assert await sees_a(nurse, ward)


async def test_a_security_label_provision_hides_the_labelled_resources(nurse, ward, client):
    labelled = observation(
        ward.a, "vital-signs", ward.lab_code, meta={"security": [{"system": CONFIDENTIALITY, "code": "R"}]}
    )
    restricted = await post(client, labelled)
    await post(client, consent(ward.a, {"type": "deny", "securityLabel": [{"system": CONFIDENTIALITY, "code": "R"}]}))
    assert (await nurse.get(f"/Observation/{restricted}")).status_code == 404
    assert await sees_a(nurse, ward)


async def test_a_security_label_provision_of_another_label_hides_nothing(nurse, ward, client):
    labelled = observation(
        ward.a, "vital-signs", ward.lab_code, meta={"security": [{"system": CONFIDENTIALITY, "code": "N"}]}
    )
    normal = await post(client, labelled)
    await post(client, consent(ward.a, {"type": "deny", "securityLabel": [{"system": CONFIDENTIALITY, "code": "R"}]}))
    assert (await nurse.get(f"/Observation/{normal}")).status_code == 200


async def test_a_purpose_provision_applies_to_tokens_carrying_that_purpose(user_for, ward, client):
    await post(client, consent(ward.a, {"type": "deny", "purpose": [{"system": ACT_REASON, "code": "HRESCH"}]}))
    researching = await user_for(open_policy(), purpose_of_use=["HRESCH"])
    assert not await sees_a(researching, ward)


async def test_a_purpose_provision_does_not_apply_to_other_purposes(nurse, ward, client):
    await post(client, consent(ward.a, {"type": "deny", "purpose": [{"system": ACT_REASON, "code": "HRESCH"}]}))
    assert await sees_a(nurse, ward)


# ---- which Consents count ---------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"status": "inactive"},
        {"status": "draft"},
        {"scope": {"coding": [{"system": CONSENT_SCOPE, "code": "treatment"}]}},
        {"dateTime": "2999-01-01"},
    ],
)
async def test_a_consent_not_in_force_has_no_effect(nurse, ward, client, change):
    await post(client, {**consent(ward.a, {"type": "deny"}), **change})
    assert await sees_a(nurse, ward)


async def test_deleting_the_consent_takes_effect_on_the_next_request(nurse, ward, client, denied):
    assert not await sees_a(nurse, ward)
    assert (await client.delete(f"/Consent/{denied}")).status_code in (200, 204)
    assert await sees_a(nurse, ward)


async def test_updating_the_consent_takes_effect_on_the_next_request(nurse, ward, client, denied):
    assert not await sees_a(nurse, ward)
    revoked = {**consent(ward.a, {"type": "deny", "actor": actor(f"Practitioner/{ward.nurse}")}), "id": denied}
    revoked["status"] = "inactive"
    res = await client.put(f"/Consent/{denied}", json=revoked, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 200, res.text
    assert await sees_a(nurse, ward)


async def test_a_consent_written_in_a_transaction_takes_effect(nurse, ward, client):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": consent(ward.a, {"type": "deny"}), "request": {"method": "POST", "url": "Consent"}}],
    }
    res = await client.post("/", json=bundle, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 200, res.text
    assert not await sees_a(nurse, ward)


# ---- who is not bound -------------------------------------------------------------------


async def test_the_patient_themself_is_not_restricted_by_their_consent(ward, client, client_for):
    await post(client, consent(ward.a, {"type": "deny"}))
    patient = await client_for("user/*.rs", fhirUser=f"Patient/{ward.a}", subject=f"patient-{uuid.uuid4().hex[:8]}")
    assert (await patient.get(f"/Observation/{ward.vitals_a}")).status_code == 200
    assert ward.vitals_a in await found(patient, "/Observation", {"subject": f"Patient/{ward.a}"})


async def test_a_system_client_is_not_restricted(ward, client, denied):
    assert (await client.get(f"/Observation/{ward.vitals_a}")).status_code == 200
    assert ward.vitals_a in await found(client, "/Observation", {"subject": f"Patient/{ward.a}"})


async def test_a_user_in_patient_context_is_restricted(user_for, ward, denied):
    launched = await user_for(open_policy(), scope="patient/*.rs", patient=ward.a)
    assert (await launched.get(f"/Observation/{ward.vitals_a}")).status_code == 404


# ---- break-the-glass --------------------------------------------------------------------


async def glass_client(user_for: Any, glass: bool) -> httpx.AsyncClient:
    return await user_for(open_policy(glass=glass), purpose_of_use=["ETREAT", "BTG"])


async def test_break_the_glass_shows_denied_data_and_the_audit_says_so(user_for, ward, denied, app, client):
    doctor = await glass_client(user_for, glass=True)
    res = await doctor.get(f"/Observation/{ward.vitals_a}")
    assert res.status_code == 200
    await app.state.audit.flush()
    events = (await client.get("/AuditEvent", params={"entity": f"Observation/{ward.vitals_a}"})).json()
    [event] = [e["resource"] for e in events["entry"] if e["resource"]["subtype"][0]["code"] == "read"]
    purposes = {c["code"] for p in event["purposeOfEvent"] for c in p["coding"]}
    assert purposes == {"ETREAT", "BTG"}
    assert event["meta"]["security"][0]["code"] == "BTG"
    assert "break-the-glass overrode" in event["outcomeDesc"]


async def test_break_the_glass_without_a_deny_is_not_marked_as_an_override(user_for, ward, app, client):
    doctor = await glass_client(user_for, glass=True)
    assert (await doctor.get(f"/Observation/{ward.vitals_b}")).status_code == 200
    await app.state.audit.flush()
    events = (await client.get("/AuditEvent", params={"entity": f"Observation/{ward.vitals_b}"})).json()
    [event] = [e["resource"] for e in events["entry"] if e["resource"]["subtype"][0]["code"] == "read"]
    assert {c["code"] for p in event["purposeOfEvent"] for c in p["coding"]} == {"ETREAT", "BTG"}
    assert "meta" not in event


async def test_break_the_glass_without_a_policy_allowing_it_is_refused(user_for, ward, denied):
    doctor = await glass_client(user_for, glass=False)
    res = await doctor.get(f"/Observation/{ward.vitals_a}")
    assert res.status_code == 403
    assert "break-the-glass" in res.text


async def test_break_the_glass_is_not_granted_without_a_policy_allowing_it(app, admin):
    client_id = f"btg-{uuid.uuid4().hex[:8]}"
    res = await admin.post("/clients", json={"name": "btg", "client_id": client_id, "scopes": ["system/*.rs"]})
    assert res.status_code == 201, res.text
    secret = res.json()["client_secret"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as oauth:
        form = {"grant_type": "client_credentials", "scope": "system/*.rs", "purpose_of_use": "BTG"}
        res = await oauth.post("/oauth/token", data=form, auth=(client_id, secret))
        assert res.status_code == 400 and res.json()["error"] == "invalid_request"
        form["purpose_of_use"] = "TREAT"
        res = await oauth.post("/oauth/token", data=form, auth=(client_id, secret))
        assert res.status_code == 200, res.text
        form["purpose_of_use"] = "NOT-A-CODE"
        res = await oauth.post("/oauth/token", data=form, auth=(client_id, secret))
        assert res.status_code == 400 and res.json()["error"] == "invalid_request"


async def test_break_the_glass_is_granted_with_a_policy_allowing_it(app, admin):
    policy = open_policy(glass=True)
    assert (await admin.post("/policies", json=policy)).status_code == 201
    client_id = f"btg-{uuid.uuid4().hex[:8]}"
    registration = {"name": "btg", "client_id": client_id, "scopes": ["system/*.rs"], "policies": [policy["name"]]}
    res = await admin.post("/clients", json=registration)
    assert res.status_code == 201, res.text
    secret = res.json()["client_secret"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as oauth:
        form = {"grant_type": "client_credentials", "scope": "system/*.rs", "purpose_of_use": "BTG"}
        res = await oauth.post("/oauth/token", data=form, auth=(client_id, secret))
    assert res.status_code == 200, res.text
    payload = res.json()["access_token"].split(".")[1]
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["purpose_of_use"] == ["BTG"]


async def test_a_policy_with_a_break_the_glass_that_is_not_a_boolean_is_400(admin):
    document = {**open_policy(), "breakTheGlass": "yes"}
    res = await admin.post("/policies", json=document)
    assert res.status_code == 400
    assert "breakTheGlass" in res.text


# ---- malformed Consents -----------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "deny"}
    for _ in range(depth):
        node = {"type": "permit", "provision": [node]}
    return node


async def test_provisions_nested_too_deep_are_422(client, ward):
    res = await client.post("/Consent", json=consent(ward.a, nested(9)), headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 422, res.text
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_provisions_at_the_nesting_bound_are_stored(client, ward):
    res = await client.post("/Consent", json=consent(ward.a, nested(8)), headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 201, res.text


async def test_thousands_of_provisions_are_422(client, ward):
    many = {"type": "permit", "provision": [{"type": "deny"} for _ in range(3000)]}
    res = await client.post("/Consent", json=consent(ward.a, many), headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 422, res.text


async def test_huge_nesting_never_500s(client, ward):
    res = await client.post("/Consent", json=consent(ward.a, nested(400)), headers={"Content-Type": FHIR_JSON})
    assert 400 <= res.status_code < 500, res.text


@pytest.mark.parametrize(
    "reference",
    [
        "http://other.example.org/fhir/Practitioner/1",
        "urn:uuid:6a9f3a4e-45b4-4c4f-9c8b-7dbf3e0c1a11",
        "#contained",
        "Practitioner/" + "x" * 64,
        "Patient/someone",
        "Device/1",
        "Practitioner",
    ],
)
async def test_odd_actor_references_are_stored_and_deny_no_one(nurse, ward, client, reference):
    res = await client.post(
        "/Consent",
        json=consent(ward.a, {"type": "deny", "actor": actor(reference)}),
        headers={"Content-Type": FHIR_JSON},
    )
    assert res.status_code in (201, 400, 422), res.text
    assert await sees_a(nurse, ward)


async def test_a_consent_of_a_patient_of_another_server_denies_nothing_here(nurse, ward, client):
    c = consent(ward.a, {"type": "deny"})
    c["patient"] = {"reference": f"http://other.example.org/fhir/Patient/{ward.a}"}
    assert (await client.post("/Consent", json=c, headers={"Content-Type": FHIR_JSON})).status_code == 201
    assert await sees_a(nurse, ward)
