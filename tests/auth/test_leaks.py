"""A patient-context token for patient A, and tokens restricted by v2 scope criteria,
try every door to data they may not see; they see none of it (asserted on ids)."""

from __future__ import annotations

import json

from tests.auth.world import FHIR_JSON, IDENT, LAB, VITALS, all_pages, get_ok, ids_of, no_b, observation

# -- search ------------------------------------------------------------------------------


async def test_type_search_returns_only_the_patients_own(as_a, world):
    found = await all_pages(
        as_a, "/Observation", {"code": f"urn:test:code|{world.b.code},urn:test:code|{world.a.code}"}
    )
    assert {world.a.lab, world.a.vitals, world.performed} <= found
    no_b(found, world)


async def test_search_naming_the_other_patient_finds_nothing(as_a, world):
    for url, params in [
        ("/Observation", {"subject": f"Patient/{world.b.patient}"}),
        ("/Observation", {"patient": world.b.patient}),
        ("/Observation", {"identifier": f"{IDENT}|{world.b.obs_ident}"}),
        ("/Condition", {"code": f"urn:test:code|{world.b.code}"}),
        ("/Patient", {"family": world.b.family}),
        ("/Encounter", {"subject": f"Patient/{world.b.patient}"}),
    ]:
        assert ids_of(await get_ok(as_a, url, params)) == set(), (url, params)


async def test_id_lists_keep_only_reachable_ids(as_a, world):
    bundle = await get_ok(as_a, "/Observation", {"_id": f"{world.a.lab},{world.b.lab},{world.cross}"})
    assert ids_of(bundle) == {world.a.lab}
    bundle = await get_ok(as_a, "/Patient", {"_id": f"{world.a.patient},{world.b.patient}"})
    assert ids_of(bundle) == {world.a.patient}


async def test_list_of_the_other_patient_names_nothing(as_a, world):
    assert ids_of(await get_ok(as_a, "/Observation", {"_list": world.b.list})) == set()
    assert ids_of(await get_ok(as_a, "/Observation", {"_list": world.unlisted})) == set()
    assert ids_of(await get_ok(as_a, "/Observation", {"_list": world.a.list})) == {world.a.lab}


async def test_chains_do_not_reach_the_other_patient(as_a, world):
    for params in [
        {"subject:Patient.family": world.b.family},
        {"patient.identifier": f"{IDENT}|{world.b.patient_ident}"},
        {"encounter.subject": f"Patient/{world.b.patient}"},
    ]:
        assert ids_of(await get_ok(as_a, "/Observation", params)) == set(), params
    # a chain through A's encounter to B's observation: the encounter is A's, the match is not
    bundle = await get_ok(as_a, "/Observation", {"encounter": f"Encounter/{world.a.encounter}"})
    assert ids_of(bundle) == {world.a.lab}


async def test_has_is_not_an_oracle_on_the_other_patients_data(as_a, world):
    # B's code on an Observation that points at A's encounter: A's token cannot learn of it
    bundle = await get_ok(as_a, "/Encounter", {"_has:Observation:encounter:code": f"urn:test:code|{world.b.code}"})
    assert ids_of(bundle) == set()
    bundle = await get_ok(as_a, "/Patient", {"_has:Observation:subject:code": f"urn:test:code|{world.b.code}"})
    assert ids_of(bundle) == set()
    bundle = await get_ok(as_a, "/Patient", {"_has:Observation:subject:code": f"urn:test:code|{world.a.code}"})
    assert ids_of(bundle) == {world.a.patient}


async def test_includes_bring_in_nothing_of_the_other_patient(as_a, world):
    cases = [
        ("/Observation", {"_id": world.performed, "_include": "Observation:performer"}),
        ("/Observation", {"_id": world.performed, "_include": "*"}),
        ("/Encounter", {"_id": world.a.encounter, "_revinclude": "Observation:encounter"}),
        ("/Encounter", {"_id": world.a.encounter, "_revinclude": "*"}),
        ("/Practitioner", {"_id": world.practitioner, "_revinclude": "Patient:general-practitioner"}),
    ]
    for url, params in cases:
        found = ids_of(await get_ok(as_a, url, params))
        no_b(found, world)
    found = ids_of(await get_ok(as_a, "/Encounter", {"_id": world.a.encounter, "_revinclude": "Observation:encounter"}))
    assert found == {world.a.encounter, world.a.lab}


async def test_iterated_includes_bring_in_nothing_of_the_other_patient(as_a, world):
    params = [
        ("_id", world.practitioner),
        ("_revinclude", "Patient:general-practitioner"),
        ("_revinclude:iterate", "Observation:subject"),
        ("_revinclude:iterate", "Observation:performer"),
        ("_include:iterate", "Observation:performer"),
        ("_include:iterate", "Observation:encounter"),
        ("_revinclude:iterate", "Observation:encounter"),
    ]
    found = ids_of(await get_ok(as_a, "/Practitioner", params))
    assert {world.a.patient, world.a.lab, world.performed, world.a.encounter} <= found
    no_b(found, world)


async def test_the_practitioner_outside_any_compartment_is_readable(as_a, world):
    assert ids_of(await get_ok(as_a, "/Practitioner", {"_id": world.practitioner})) == {world.practitioner}
    assert (await as_a.get(f"/Medication/{world.medication}")).status_code == 200
    assert (await as_a.get(f"/Organization/{world.organization}")).status_code == 200


async def test_compartment_search_of_the_other_patient_sees_nothing(as_a, world):
    # only A's own observation performed by B is in both compartments
    assert ids_of(await get_ok(as_a, f"/Patient/{world.b.patient}/Observation")) == {world.performed}
    assert ids_of(await get_ok(as_a, f"/Patient/{world.b.patient}/Encounter")) == set()
    assert ids_of(await get_ok(as_a, f"/Patient/{world.b.patient}/Condition")) == set()
    own = ids_of(await get_ok(as_a, f"/Patient/{world.a.patient}/Observation"))
    assert {world.a.lab, world.a.vitals, world.performed} <= own
    no_b(own, world)


async def test_performer_compartment_does_not_open_the_other_patients_record(as_a, world):
    # A's observation performed by B is in B's compartment too; A sees it, B's record stays shut
    found = ids_of(await get_ok(as_a, f"/Patient/{world.b.patient}/Observation"))
    assert world.b.lab not in found


async def test_paging_reapplies_the_restriction(as_a, world):
    found = await all_pages(as_a, "/Observation", {"_count": "1", "_sort": "-date"})
    assert {world.a.lab, world.a.vitals, world.performed} <= found
    no_b(found, world)
    found = await all_pages(as_a, "/Observation", {"_count": "1", "_sort": "-_lastUpdated"})
    no_b(found, world)


async def test_a_cursor_of_a_system_search_gives_a_patient_token_nothing_more(as_a, client, world):
    wide = await get_ok(client, "/Observation", {"_count": "1", "code": f"urn:test:code|{world.b.code}"})
    nxt = next(link["url"] for link in wide["link"] if link["relation"] == "next")
    res = await as_a.get(nxt)
    assert res.status_code == 200
    no_b(ids_of(res.json()), world)


async def test_system_search_across_types_sees_only_the_patients_own(as_a, world):
    found = await all_pages(as_a, "/", {"_type": "Observation,Condition,Encounter,Patient", "_count": "50"})
    assert {world.a.patient, world.a.condition, world.a.encounter} <= found
    no_b(found, world)


async def test_totals_count_only_reachable_resources(as_a, world):
    bundle = await get_ok(as_a, "/Observation", {"code": f"urn:test:code|{world.b.code}", "_total": "accurate"})
    assert bundle["total"] == 0
    bundle = await get_ok(as_a, "/Observation", {"code": f"urn:test:code|{world.b.code}", "_summary": "count"})
    assert bundle["total"] == 0


# -- read, vread, history ------------------------------------------------------------------


async def test_read_and_vread_of_the_other_patients_resources_are_404(as_a, world):
    for rtype, rid in [
        ("Patient", world.b.patient),
        ("Observation", world.b.lab),
        ("Observation", world.cross),
        ("Encounter", world.b.encounter),
        ("Condition", world.b.condition),
    ]:
        assert (await as_a.get(f"/{rtype}/{rid}")).status_code == 404, (rtype, rid)
        assert (await as_a.get(f"/{rtype}/{rid}/_history/1")).status_code == 404, (rtype, rid)
    assert (await as_a.get(f"/Observation/{world.a.lab}")).status_code == 200


async def test_history_at_every_level_shows_nothing_of_the_other_patient(as_a, world):
    assert (await as_a.get(f"/Observation/{world.b.lab}/_history")).status_code == 404
    assert (await as_a.get(f"/Patient/{world.b.patient}/_history")).status_code == 404
    found = await all_pages(as_a, "/Observation/_history", {"_count": "100"})
    assert world.a.lab in found
    no_b(found, world)
    found = await all_pages(as_a, "/_history", {"_count": "200"})
    assert {world.a.patient, world.a.lab} <= found
    no_b(found, world)


async def test_deleted_resources_of_the_other_patient_do_not_leak(as_a, client, world):
    gone = (await client.post("/Observation", json=observation(world.b.patient, "laboratory", world.b.code))).json()
    assert (await client.delete(f"/Observation/{gone['id']}")).status_code in (200, 204)
    assert (await as_a.get(f"/Observation/{gone['id']}")).status_code == 404  # not 410
    assert (await as_a.get(f"/Observation/{gone['id']}/_history")).status_code == 404
    assert (await as_a.get(f"/Observation/{gone['id']}/_history/1")).status_code == 404
    found = await all_pages(as_a, "/Observation/_history", {"_count": "100"})
    assert gone["id"] not in found


# -- operations ------------------------------------------------------------------------------


async def test_everything_of_the_other_patient_is_404(as_a, world):
    assert (await as_a.get(f"/Patient/{world.b.patient}/$everything")).status_code == 404


async def test_everything_of_the_own_patient_holds_nothing_of_the_other(as_a, world):
    found = await all_pages(as_a, f"/Patient/{world.a.patient}/$everything", {"_count": "100"})
    assert {world.a.patient, world.a.lab, world.performed, world.practitioner} <= found
    no_b(found, world)
    found = await all_pages(as_a, "/Patient/$everything", {"_count": "100"})
    no_b(found, world)


# -- conditional interactions -------------------------------------------------------------------


async def test_if_none_exist_matching_the_other_patients_resource_creates(writer_a, client, world):
    body = observation(world.a.patient, "laboratory", "written-by-a")
    res = await writer_a.post(
        "/Observation",
        json=body,
        headers={"Content-Type": FHIR_JSON, "If-None-Exist": f"identifier={IDENT}|{world.b.obs_ident}"},
    )
    assert res.status_code == 201, res.text
    assert res.json()["id"] != world.b.lab


async def test_conditional_update_does_not_touch_the_other_patients_resource(writer_a, client, world):
    body = observation(world.a.patient, "laboratory", "written-by-a")
    res = await writer_a.put("/Observation", params={"identifier": f"{IDENT}|{world.b.obs_ident}"}, json=body)
    assert res.status_code == 201, res.text
    assert res.json()["id"] != world.b.lab
    assert (await client.get(f"/Observation/{world.b.lab}")).json()["meta"]["versionId"] == "1"


async def test_conditional_delete_does_not_delete_the_other_patients_resource(writer_a, client, world):
    res = await writer_a.delete("/Observation", params={"identifier": f"{IDENT}|{world.b.obs_ident}"})
    assert res.status_code in (200, 204), res.text
    assert (await client.get(f"/Observation/{world.b.lab}")).status_code == 200


async def test_conditional_patch_of_the_other_patients_resource_finds_nothing(writer_a, world):
    patch = [{"op": "replace", "path": "/status", "value": "amended"}]
    res = await writer_a.patch(
        "/Observation",
        params={"identifier": f"{IDENT}|{world.b.obs_ident}"},
        content=json.dumps(patch),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert res.status_code == 404, res.text


async def test_conditional_reference_in_a_bundle_does_not_resolve_to_the_other_patient(writer_a, world):
    entry = observation(world.a.patient, "laboratory", "written-by-a")
    entry["subject"] = {"reference": f"Patient?identifier={IDENT}|{world.b.patient_ident}"}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": entry, "request": {"method": "POST", "url": "Observation"}}],
    }
    res = await writer_a.post("/", json=bundle)
    assert res.status_code in (400, 404, 412), res.text
    assert world.b.patient not in res.text


# -- v2 criteria ------------------------------------------------------------------------------


async def test_criteria_token_sees_only_matching_resources(client_for, world):
    c = await client_for(f"patient/Observation.rs?category={LAB}", patient=world.a.patient)
    found = await all_pages(c, "/Observation", {"code": f"urn:test:code|{world.a.code}"})
    assert found == {world.a.lab, world.performed}
    assert (await c.get(f"/Observation/{world.a.vitals}")).status_code == 404
    assert (await c.get(f"/Observation/{world.a.vitals}/_history")).status_code == 404
    assert (await c.get(f"/Observation/{world.a.lab}")).status_code == 200


async def test_user_criteria_token_sees_matching_resources_of_every_patient(client_for, world):
    c = await client_for(f"user/Observation.rs?category={VITALS}")
    found = await all_pages(c, "/Observation", {"code": f"urn:test:code|{world.a.code},urn:test:code|{world.b.code}"})
    assert found == {world.a.vitals, world.b.vitals}
    for rid in (world.a.lab, world.b.lab, world.cross):
        assert (await c.get(f"/Observation/{rid}")).status_code == 404
        assert (await c.get(f"/Observation/{rid}/_history/1")).status_code == 404
    found = await all_pages(c, "/Observation/_history", {"_count": "100"})
    assert not found & {world.a.lab, world.b.lab, world.cross}


async def test_criteria_restrict_has_and_chains_as_the_search_would(client_for, world):
    c = await client_for(f"user/Patient.rs user/Observation.rs?category={LAB}")
    # B's vital signs carry B's code too, but only B's lab observations count
    bundle = await get_ok(c, "/Patient", {"_has:Observation:subject:category": VITALS, "_id": world.b.patient})
    assert ids_of(bundle) == set()
    bundle = await get_ok(c, "/Patient", {"_has:Observation:subject:category": LAB, "_id": world.b.patient})
    assert ids_of(bundle) == {world.b.patient}
    bundle = await get_ok(c, "/Patient", {"_id": world.a.patient, "_revinclude": "Observation:subject"})
    assert world.a.vitals not in ids_of(bundle)
    assert world.a.lab in ids_of(bundle)


async def test_criteria_restrict_everything_and_compartment_searches(client_for, world):
    c = await client_for(f"patient/Observation.rs?category={LAB} patient/Patient.rs", patient=world.a.patient)
    found = await all_pages(c, f"/Patient/{world.a.patient}/Observation", {"code": f"urn:test:code|{world.a.code}"})
    assert found == {world.a.lab, world.performed}
    found = await all_pages(c, f"/Patient/{world.a.patient}/$everything", {"_type": "Patient,Observation"})
    assert world.a.vitals not in found
    assert world.a.lab in found


async def test_search_of_all_types_sees_only_the_patients_own(as_a, world):
    ids = ",".join([world.a.lab, world.b.lab, world.b.patient, world.a.patient, world.b.condition, world.medication])
    found = await all_pages(as_a, "/", {"_id": ids})
    assert found == {world.a.lab, world.a.patient, world.medication}
