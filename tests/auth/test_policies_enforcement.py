"""Access policies enforced over HTTP with real tokens: the ward-nurse policy of issue 11.

Nurse N is the general practitioner of patient A, not of patient B. Her policy lets her
read and search her own patients, every patient's vital signs, and everything else in
her patients' compartments, but no laboratory Observation (a rule naming Observation
replaces the `*` rule for Observations).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from headless_ehr.auth.bootstrap import admin_client_file
from tests.auth.test_policies_admin import ward_nurse
from tests.auth.world import FHIR_JSON, observation, post
from tests.conftest import bearer, mint_token


@dataclass
class Ward:
    nurse: str = ""  # Practitioner id
    other: str = ""
    a: str = ""  # patient of the nurse
    b: str = ""  # patient of the other practitioner
    family_a: str = ""
    family_b: str = ""
    lab_code: str = ""
    vitals_a: str = ""
    lab_a: str = ""
    vitals_b: str = ""
    encounter_a: str = ""
    condition_a: str = ""


@pytest.fixture
async def admin(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    client_id = orjson.loads(admin_client_file(app.state.settings.data_dir).read_bytes())["client_id"]
    headers = bearer(mint_token(app, "system/*.*", client_id=client_id, subject=client_id))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver/admin", headers=headers) as c:
        yield c


@pytest.fixture
async def ward(client: httpx.AsyncClient) -> Ward:
    w = Ward(family_a=uuid.uuid4().hex, family_b=uuid.uuid4().hex, lab_code=uuid.uuid4().hex)
    w.nurse = await post(client, {"resourceType": "Practitioner", "name": [{"family": "Nurse"}]})
    w.other = await post(client, {"resourceType": "Practitioner", "name": [{"family": "Other"}]})
    for side, family, gp in (("a", w.family_a, w.nurse), ("b", w.family_b, w.other)):
        patient = {
            "resourceType": "Patient",
            "name": [{"family": family}],
            "generalPractitioner": [{"reference": f"Practitioner/{gp}"}],
        }
        setattr(w, side, await post(client, patient))
    w.encounter_a = await post(
        client,
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{w.a}"},
        },
    )
    encounter = {"reference": f"Encounter/{w.encounter_a}"}
    note = [{"text": "secret note"}]
    w.vitals_a = await post(client, observation(w.a, "vital-signs", w.lab_code, encounter=encounter, note=note))
    w.lab_a = await post(client, observation(w.a, "laboratory", w.lab_code, encounter=encounter))
    w.vitals_b = await post(client, observation(w.b, "vital-signs", w.lab_code))
    w.condition_a = await post(client, {"resourceType": "Condition", "subject": {"reference": f"Patient/{w.a}"}})
    return w


@pytest.fixture
async def assign(admin: httpx.AsyncClient, client_for: Any, ward: Ward) -> Any:
    """assign(policy document) -> a client holding a user/*.cruds token of a new user who
    is the nurse (fhirUser Practitioner/<nurse>) with that policy."""

    async def make(document: dict[str, Any] | None = None, scope: str = "user/*.cruds") -> httpx.AsyncClient:
        names = []
        if document is not None:
            res = await admin.post("/policies", json=document)
            assert res.status_code == 201, res.text
            names.append(document["name"])
        username = f"nurse-{uuid.uuid4().hex[:10]}"
        user = {
            "username": username,
            "password": "correct horse battery",
            "fhir_user": f"Practitioner/{ward.nurse}",
            "policies": names,
        }
        res = await admin.post("/users", json=user)
        assert res.status_code == 201, res.text
        return await client_for(scope, fhirUser=f"Practitioner/{ward.nurse}", subject=username)

    return make


def policy_name() -> str:
    return f"ward-nurse-{uuid.uuid4().hex[:10]}"


def with_interactions(document: dict[str, Any], rtype: str, *extra: str) -> dict[str, Any]:
    """The document with more interactions on the rules of rtype."""
    for rule in document["rules"]:
        if rule["resourceType"] == rtype:
            rule["interactions"] = [*rule["interactions"], *extra]
    return document


@pytest.fixture
async def nurse(assign: Any) -> httpx.AsyncClient:
    return await assign(ward_nurse(policy_name()))


def ids(bundle: dict[str, Any], rtype: str | None = None) -> set[str]:
    return {
        e["resource"]["id"] for e in bundle.get("entry", ()) if rtype is None or e["resource"]["resourceType"] == rtype
    }


# ---- reads ------------------------------------------------------------------------------


async def test_the_nurse_reads_a_vital_sign_of_her_patient(nurse, ward):
    assert (await nurse.get(f"/Observation/{ward.vitals_a}")).status_code == 200


async def test_the_nurse_cannot_read_a_laboratory_observation_of_her_patient(nurse, ward):
    assert (await nurse.get(f"/Observation/{ward.lab_a}")).status_code == 404


async def test_the_nurse_reads_her_own_patient(nurse, ward):
    assert (await nurse.get(f"/Patient/{ward.a}")).status_code == 200


async def test_the_nurse_cannot_read_a_patient_whose_general_practitioner_is_someone_else(nurse, ward):
    assert (await nurse.get(f"/Patient/{ward.b}")).status_code == 404


async def test_the_star_rule_opens_the_rest_of_her_patients_compartment(nurse, ward):
    assert (await nurse.get(f"/Condition/{ward.condition_a}")).status_code == 200
    assert (await nurse.get(f"/Encounter/{ward.encounter_a}")).status_code == 200


async def test_the_star_rule_opens_nothing_outside_a_patient_compartment(nurse, ward):
    assert (await nurse.get(f"/Practitioner/{ward.other}")).status_code == 403


# ---- searches ---------------------------------------------------------------------------


async def test_a_search_finds_the_vital_sign_but_not_the_laboratory_observation(nurse, ward):
    res = await nurse.get("/Observation", params={"subject": f"Patient/{ward.a}"})
    assert res.status_code == 200
    assert ids(res.json()) == {ward.vitals_a}


async def test_a_patient_search_finds_only_her_patients(nurse, ward):
    res = await nurse.get("/Patient", params={"family": f"{ward.family_a},{ward.family_b}"})
    assert ids(res.json()) == {ward.a}


async def test_include_brings_her_patient_and_revinclude_no_laboratory_observation(nurse, ward):
    res = await nurse.get("/Observation", params={"_id": ward.vitals_a, "_include": "Observation:subject"})
    assert ids(res.json()) == {ward.vitals_a, ward.a}
    res = await nurse.get("/Patient", params={"_id": ward.a, "_revinclude": "Observation:subject"})
    assert ids(res.json(), "Observation") == {ward.vitals_a}


async def test_revinclude_from_an_encounter_leaves_the_laboratory_observation_out(nurse, ward):
    res = await nurse.get("/Encounter", params={"_id": ward.encounter_a, "_revinclude": "Observation:encounter"})
    assert ids(res.json(), "Observation") == {ward.vitals_a}


async def test_a_chain_finds_no_laboratory_observation(nurse, ward):
    res = await nurse.get("/Observation", params={"subject:Patient.family": ward.family_a})
    assert ids(res.json()) == {ward.vitals_a}


async def test_a_chain_through_another_practitioners_patient_finds_nothing(nurse, ward):
    res = await nurse.get("/Observation", params={"subject:Patient.family": ward.family_b})
    assert ids(res.json()) == set()


async def test_has_does_not_reveal_the_laboratory_observation(nurse, ward, client):
    lab_only = uuid.uuid4().hex
    await post(client, observation(ward.a, "laboratory", lab_only))
    res = await nurse.get("/Patient", params={"_has:Observation:subject:code": f"urn:test:code|{lab_only}"})
    assert res.status_code == 200 and ids(res.json()) == set()
    res = await nurse.get("/Patient", params={"_has:Observation:subject:code": f"urn:test:code|{ward.lab_code}"})
    assert ids(res.json()) == {ward.a}  # through her vital sign


async def test_a_system_search_holds_no_laboratory_observation_and_no_other_patient(nurse, ward):
    res = await nurse.get("/", params={"_type": "Observation,Patient", "_id": f"{ward.lab_a},{ward.b},{ward.a}"})
    assert res.status_code == 200
    assert ids(res.json()) == {ward.a}


# ---- history and $everything --------------------------------------------------------------


async def test_history_is_refused_when_the_policy_grants_no_history(nurse, ward):
    assert (await nurse.get(f"/Observation/{ward.vitals_a}/_history")).status_code == 403
    assert (await nurse.get(f"/Observation/{ward.lab_a}/_history")).status_code == 404  # not even readable


async def test_history_granted_shows_the_vital_sign_and_not_the_laboratory_observation(assign, ward):
    nurse = await assign(with_interactions(ward_nurse(policy_name()), "Observation", "history"))
    assert (await nurse.get(f"/Observation/{ward.vitals_a}/_history")).status_code == 200
    assert (await nurse.get(f"/Observation/{ward.lab_a}/_history")).status_code == 404
    res = await nurse.get("/Observation/_history", params={"_count": "1000"})
    assert res.status_code == 200
    seen = ids(res.json())
    assert ward.vitals_a in seen and ward.lab_a not in seen


async def test_everything_is_refused_without_the_operation_interaction(nurse, ward):
    assert (await nurse.get(f"/Patient/{ward.a}/$everything")).status_code == 403


async def test_everything_shows_her_patients_record_without_the_laboratory_observation(assign, ward):
    nurse = await assign(with_interactions(ward_nurse(policy_name()), "Patient", "operation"))
    res = await nurse.get(f"/Patient/{ward.a}/$everything")
    assert res.status_code == 200, res.text
    seen = ids(res.json())
    assert {ward.a, ward.vitals_a, ward.encounter_a, ward.condition_a} <= seen
    assert ward.lab_a not in seen


async def test_everything_of_another_practitioners_patient_is_404(assign, ward):
    nurse = await assign(with_interactions(ward_nurse(policy_name()), "Patient", "operation"))
    assert (await nurse.get(f"/Patient/{ward.b}/$everything")).status_code == 404


# ---- writes -----------------------------------------------------------------------------


async def test_the_nurse_creates_a_vital_sign(nurse, ward):
    res = await nurse.post(
        "/Observation", json=observation(ward.a, "vital-signs", "x"), headers={"Content-Type": FHIR_JSON}
    )
    assert res.status_code == 201, res.text


async def test_the_nurse_cannot_create_a_laboratory_observation(nurse, ward):
    res = await nurse.post(
        "/Observation", json=observation(ward.a, "laboratory", "x"), headers={"Content-Type": FHIR_JSON}
    )
    assert res.status_code == 403


async def test_an_update_is_refused_when_the_policy_grants_none(nurse, ward, client):
    current = (await client.get(f"/Observation/{ward.vitals_a}")).json()
    res = await nurse.put(f"/Observation/{ward.vitals_a}", json=current, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 403


async def test_an_update_must_match_a_rule_before_and_after(assign, ward, client):
    nurse = await assign(with_interactions(ward_nurse(policy_name()), "Observation", "update"))
    vitals = (await client.get(f"/Observation/{ward.vitals_a}")).json()
    vitals.pop("note")
    ok = await nurse.put(f"/Observation/{ward.vitals_a}", json=vitals, headers={"Content-Type": FHIR_JSON})
    assert ok.status_code == 200, ok.text
    relabelled = {**vitals, "category": observation(ward.a, "laboratory", "x")["category"]}
    res = await nurse.put(f"/Observation/{ward.vitals_a}", json=relabelled, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 403  # after: a laboratory observation
    lab = (await client.get(f"/Observation/{ward.lab_a}")).json()
    lab["category"] = vitals["category"]
    res = await nurse.put(f"/Observation/{ward.lab_a}", json=lab, headers={"Content-Type": FHIR_JSON})
    assert res.status_code in (403, 404)  # before: a laboratory observation
    assert (await client.get(f"/Observation/{ward.lab_a}")).json()["category"][0]["coding"][0]["code"] == "laboratory"


# ---- who needs a policy, and changes -------------------------------------------------------


async def test_a_practitioner_user_without_a_policy_gets_nothing(assign, ward):
    nobody = await assign(None)
    assert (await nobody.get(f"/Patient/{ward.a}")).status_code == 403
    assert (await nobody.get("/Observation", params={"subject": f"Patient/{ward.a}"})).status_code == 403


async def test_a_system_client_without_a_policy_keeps_its_scopes(client, ward):
    assert (await client.get(f"/Observation/{ward.lab_a}")).status_code == 200


async def test_the_token_scopes_still_bound_the_policy(assign, ward):
    nurse = await assign(ward_nurse(policy_name()), scope="user/Patient.rs")
    assert (await nurse.get(f"/Patient/{ward.a}")).status_code == 200
    assert (await nurse.get(f"/Observation/{ward.vitals_a}")).status_code == 403


async def test_a_new_version_of_the_policy_applies_to_the_next_request(assign, admin, ward):
    document = ward_nurse(policy_name())
    nurse = await assign(document)
    assert (await nurse.get(f"/Observation/{ward.vitals_a}")).status_code == 200
    document["rules"] = [r for r in document["rules"] if r["resourceType"] == "Patient"]
    assert (await admin.put(f"/policies/{document['name']}", json=document)).status_code == 200
    assert (await nurse.get(f"/Observation/{ward.vitals_a}")).status_code == 403


async def test_another_node_sees_a_policy_change_within_seconds(assign, admin, app_with, ward):
    document = ward_nurse(policy_name())
    await assign(document)
    node = await app_with()  # a second app on the same database
    username = f"nurse-{uuid.uuid4().hex[:10]}"
    user = {"username": username, "password": "correct horse battery", "fhir_user": f"Practitioner/{ward.nurse}"}
    await admin.post("/users", json={**user, "policies": [document["name"]]})
    token = mint_token(node._transport.app, "user/*.cruds", fhirUser=f"Practitioner/{ward.nurse}", subject=username)
    headers = bearer(token)
    assert (await node.get(f"/Observation/{ward.vitals_a}", headers=headers)).status_code == 200
    document["rules"] = [r for r in document["rules"] if r["resourceType"] == "Patient"]
    await admin.put(f"/policies/{document['name']}", json=document)
    for _ in range(40):
        if (await node.get(f"/Observation/{ward.vitals_a}", headers=headers)).status_code == 403:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the other node kept the old policy")


async def test_a_practitioner_without_a_policy_keeps_a_patient_context_token(assign, ward, client_for):
    # a patient-level token reaches one patient's record: its scopes alone bound it
    username = f"nurse-{uuid.uuid4().hex[:10]}"
    launched = await client_for("patient/*.rs", fhirUser=f"Practitioner/{ward.nurse}", subject=username, patient=ward.a)
    assert (await launched.get(f"/Observation/{ward.lab_a}")).status_code == 200


# ---- hiddenElements and readonlyElements ---------------------------------------------------


def holds_note(bundle: dict[str, Any]) -> bool:
    return any("note" in e.get("resource", {}) for e in bundle.get("entry", ()))


async def test_a_hidden_element_is_left_out_of_a_read_and_the_resource_says_it_is_subsetted(nurse, ward):
    body = (await nurse.get(f"/Observation/{ward.vitals_a}")).json()
    assert "note" not in body and body["status"] == "final"
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"} in body["meta"][
        "tag"
    ]


async def test_a_hidden_element_is_left_out_of_searches_and_includes(nurse, ward):
    res = await nurse.get("/Observation", params={"_id": ward.vitals_a})
    assert ids(res.json()) == {ward.vitals_a} and not holds_note(res.json())
    res = await nurse.get("/Patient", params={"_id": ward.a, "_revinclude": "Observation:subject"})
    assert ward.vitals_a in ids(res.json()) and not holds_note(res.json())
    res = await nurse.get("/Observation", params={"_id": ward.vitals_a, "_elements": "note,status"})
    assert not holds_note(res.json())


async def test_a_hidden_element_is_left_out_of_history_and_everything(assign, ward):
    document = with_interactions(ward_nurse(policy_name()), "Observation", "history")
    nurse = await assign(with_interactions(document, "Patient", "operation"))
    res = await nurse.get(f"/Observation/{ward.vitals_a}/_history")
    assert res.status_code == 200 and res.json()["entry"] and not holds_note(res.json())
    res = await nurse.get(f"/Patient/{ward.a}/$everything")
    assert ward.vitals_a in ids(res.json()) and not holds_note(res.json())


async def test_a_hidden_element_is_left_out_of_a_batch_read(nurse, ward):
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": f"Observation?_id={ward.vitals_a}"}}],
    }
    res = await nurse.post("/", json=batch, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 200, res.text
    inner = res.json()["entry"][0]["resource"]
    assert ids(inner) == {ward.vitals_a} and not holds_note(inner)


async def test_an_update_keeps_the_hidden_element_it_never_saw(assign, ward, client):
    nurse = await assign(with_interactions(ward_nurse(policy_name()), "Observation", "update"))
    seen = (await nurse.get(f"/Observation/{ward.vitals_a}")).json()
    seen["valueString"] = "changed"
    res = await nurse.put(f"/Observation/{ward.vitals_a}", json=seen, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 200, res.text
    stored = (await client.get(f"/Observation/{ward.vitals_a}")).json()
    assert stored["valueString"] == "changed" and stored["note"] == [{"text": "secret note"}]


async def test_changing_a_hidden_element_is_403(assign, ward):
    nurse = await assign(with_interactions(ward_nurse(policy_name()), "Observation", "update"))
    seen = (await nurse.get(f"/Observation/{ward.vitals_a}")).json()
    seen["note"] = [{"text": "overwritten"}]
    res = await nurse.put(f"/Observation/{ward.vitals_a}", json=seen, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 403


async def test_changing_a_readonly_element_by_update_is_403(assign, ward, client):
    nurse = await assign(with_interactions(ward_nurse(policy_name()), "Observation", "update"))
    seen = (await nurse.get(f"/Observation/{ward.vitals_a}")).json()
    seen["status"] = "amended"
    res = await nurse.put(f"/Observation/{ward.vitals_a}", json=seen, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 403 and "status" in res.text
    assert (await client.get(f"/Observation/{ward.vitals_a}")).json()["status"] == "final"


async def test_changing_a_readonly_element_by_patch_is_403(assign, ward, client):
    nurse = await assign(with_interactions(ward_nurse(policy_name()), "Observation", "patch"))
    patch = [{"op": "replace", "path": "/status", "value": "amended"}]
    headers = {"Content-Type": "application/json-patch+json"}
    res = await nurse.patch(f"/Observation/{ward.vitals_a}", content=orjson.dumps(patch), headers=headers)
    assert res.status_code == 403
    patch = [{"op": "add", "path": "/valueString", "value": "fine"}]
    res = await nurse.patch(f"/Observation/{ward.vitals_a}", content=orjson.dumps(patch), headers=headers)
    assert res.status_code == 200, res.text
    assert (await client.get(f"/Observation/{ward.vitals_a}")).json()["status"] == "final"


async def test_a_readonly_element_may_be_set_on_create(nurse, ward):
    res = await nurse.post(
        "/Observation", json=observation(ward.a, "vital-signs", "x"), headers={"Content-Type": FHIR_JSON}
    )
    assert res.status_code == 201 and res.json()["status"] == "final"


async def test_a_masked_resource_keeps_its_decimal_precision(nurse, ward, client):
    vitals = observation(ward.a, "vital-signs", "x", note=[{"text": "n"}])
    vitals["valueQuantity"] = {"value": 37.50, "unit": "Cel"}
    body = orjson.dumps(vitals).replace(b"37.5", b"37.50")
    rid = (await client.post("/Observation", content=body, headers={"Content-Type": FHIR_JSON})).json()["id"]
    res = await nurse.get(f"/Observation/{rid}")
    assert b'"value":37.50' in res.content and b'"note"' not in res.content


# ---- the audit trail of each step ---------------------------------------------------------


async def test_every_step_of_the_nurse_leaves_an_audit_event_with_its_outcome(nurse, ward, client, app):
    steps = [
        ("read", f"Observation/{ward.vitals_a}", (await nurse.get(f"/Observation/{ward.vitals_a}")).status_code),
        ("read", f"Observation/{ward.lab_a}", (await nurse.get(f"/Observation/{ward.lab_a}")).status_code),
        ("read", f"Patient/{ward.b}", (await nurse.get(f"/Patient/{ward.b}")).status_code),
    ]
    assert [s[2] for s in steps] == [200, 404, 404]
    search = await nurse.get("/Observation", params={"patient": ward.a})
    assert search.status_code == 200
    vital = observation(ward.a, "vital-signs", ward.lab_code)
    created = await nurse.post("/Observation", json=vital)
    assert created.status_code == 201
    changed = {**created.json(), "status": "amended"}
    refused = await nurse.put(f"/Observation/{created.json()['id']}", json=changed)
    assert refused.status_code == 403
    await app.state.audit.flush()

    found = await client.get("/AuditEvent", params={"agent": f"Practitioner/{ward.nurse}", "_count": "100"})
    assert found.status_code == 200
    events = [e["resource"] for e in found.json()["entry"]]

    def outcomes(subtype: str, reference: str) -> list[str]:
        return [
            e["outcome"]
            for e in events
            if e["subtype"][0]["code"] == subtype
            and any(x.get("what", {}).get("reference") == reference for x in e.get("entity", []))
        ]

    assert outcomes("read", f"Observation/{ward.vitals_a}") == ["0"]
    assert outcomes("read", f"Observation/{ward.lab_a}") == ["4"]
    assert outcomes("read", f"Patient/{ward.b}") == ["4"]
    # the search names the patient whose data it returned; the create its new version
    assert outcomes("search-type", f"Patient/{ward.a}") == ["0"]
    assert outcomes("create", f"Observation/{created.json()['id']}/_history/1") == ["0"]
    assert outcomes("update", f"Observation/{created.json()['id']}") == ["4"]
