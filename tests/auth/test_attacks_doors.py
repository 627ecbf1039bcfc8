"""An attacker holding patient A's token tries the less travelled doors to patient B's
data: modifiers, nested `_has`, wildcard includes, compartments of other types,
`$everything` of an encounter, batches, POST `_search`, HEAD, conditional headers,
and writes that would land in B's record. Each test asserts on ids."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.auth.world import FHIR_JSON, IDENT, World, all_pages, get_ok, ids_of, no_b, observation, post, transaction
from tests.conftest import bearer, mint_token

# -- search modifiers ------------------------------------------------------------------------


async def test_modifiers_match_only_reachable_rows(as_a, user_a, world):
    cases = [
        ("/Patient", {"family:contains": world.b.family[4:20]}),
        ("/Patient", {"family:exact": world.b.family}),
        ("/Patient", {"name:missing": "false", "_id": world.b.patient}),
        ("/Patient", {"identifier:not": f"{IDENT}|{world.a.patient_ident}"}),
        ("/Observation", {"code:not": f"urn:test:code|{world.a.code}", "_count": "200"}),
        ("/Observation", {"code:text": "x", "_id": world.b.lab}),
        ("/Observation", {"subject:missing": "false", "code": f"urn:test:code|{world.b.code}"}),
        ("/Observation", {"subject:identifier": f"{IDENT}|{world.b.patient_ident}"}),
        ("/Observation", {"identifier:of-type": "urn:x|y|" + world.b.obs_ident}),
        ("/Observation", {"_lastUpdated": "gt2000-01-01", "code": f"urn:test:code|{world.b.code}"}),
        ("/Observation", {"_tag:missing": "true", "code": f"urn:test:code|{world.b.code}"}),
        ("/Observation", {"_profile:missing": "true", "code": f"urn:test:code|{world.b.code}"}),
        ("/Observation", {"_security:missing": "true", "code": f"urn:test:code|{world.b.code}"}),
    ]
    for c in (as_a, user_a):
        for url, params in cases:
            res = await c.get(url, params=params)
            assert res.status_code in (200, 400), (url, params, res.text)
            if res.status_code == 200:
                no_b(ids_of(res.json()), world)


async def test_nested_has_is_no_oracle(as_a, world):
    params = {"_has:Observation:subject:_has:List:item:_id": world.b.list}
    res = await as_a.get("/Patient", params=params)
    assert res.status_code in (200, 400), res.text
    if res.status_code == 200:
        assert ids_of(res.json()) == set()
    params = {"_has:Encounter:subject:_has:Observation:encounter:code": f"urn:test:code|{world.b.code}"}
    res = await as_a.get("/Patient", params=params)
    assert res.status_code in (200, 400), res.text
    if res.status_code == 200:
        assert ids_of(res.json()) == set()  # B's cross observation points at A's encounter


async def test_wildcard_iterated_includes_bring_in_nothing_of_b(as_a, world):
    iterated = [("_revinclude:iterate", "*"), ("_include:iterate", "*")]
    for url, params in [
        ("/Patient", [("_id", world.a.patient), *iterated]),
        ("/Practitioner", [("_id", world.practitioner), ("_revinclude", "*"), *iterated]),
    ]:
        res = await as_a.get(url, params=params)
        assert res.status_code in (200, 400), res.text
        if res.status_code == 200:
            no_b(ids_of(res.json()), world)


async def test_post_search_applies_the_restriction(as_a, world):
    res = await as_a.post(
        "/Observation/_search",
        data={"code": f"urn:test:code|{world.b.code}", "_id": world.b.lab},
    )
    assert res.status_code == 200, res.text
    assert ids_of(res.json()) == set()


async def test_other_compartments_show_nothing_of_b(as_a, world):
    # B's observation points at A's encounter: it is in A's encounter's compartment, and B's
    found = await all_pages(as_a, f"/Encounter/{world.a.encounter}/*")
    no_b(found, world)
    found = await all_pages(as_a, f"/Encounter/{world.a.encounter}/Observation")
    assert found == {world.a.lab}
    found = await all_pages(as_a, f"/Patient/{world.b.patient}/*")
    assert found == {world.performed}
    found = await all_pages(as_a, f"/Practitioner/{world.practitioner}/*")
    no_b(found, world)


async def test_everything_of_encounters(as_a, world):
    res = await as_a.get(f"/Encounter/{world.b.encounter}/$everything")
    assert res.status_code == 404, res.text
    found = await all_pages(as_a, f"/Encounter/{world.a.encounter}/$everything", {"_count": "1"})
    assert world.a.lab in found
    no_b(found, world)


async def test_everything_with_type_window_and_paging(as_a, world):
    params = {"_type": "Observation,Patient,Encounter", "start": "2000-01-01", "end": "2100-01-01", "_count": "1"}
    found = await all_pages(as_a, f"/Patient/{world.a.patient}/$everything", params)
    assert world.a.lab in found
    no_b(found, world)


async def test_batch_reads_see_only_reachable_rows(as_a, world):
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Observation/{world.b.lab}"}},
            {"request": {"method": "GET", "url": f"Observation?patient={world.b.patient}"}},
            {"request": {"method": "GET", "url": f"Patient?_id={world.b.patient}"}},
            {"request": {"method": "GET", "url": f"Observation/{world.b.lab}/_history/1"}},
        ],
    }
    res = await as_a.post("/", json=bundle, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 200, res.text
    entries = res.json()["entry"]
    assert entries[0]["response"]["status"].startswith("404")
    assert entries[3]["response"]["status"].startswith("404")
    for e in entries[1:3]:
        assert e["response"]["status"].startswith("200")
        assert ids_of(e["resource"]) == set()


async def test_head_and_conditional_reads_do_not_probe_existence(as_a, client, world):
    res = await as_a.head(f"/Observation/{world.b.lab}")
    assert res.status_code == 404
    etag = (await client.get(f"/Observation/{world.b.lab}")).headers["ETag"]
    res = await as_a.get(f"/Observation/{world.b.lab}", headers={"If-None-Match": etag})
    assert res.status_code == 404
    res = await as_a.get(f"/Observation/{world.b.lab}", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert res.status_code == 404


async def test_validate_delete_of_b_says_nothing(writer_a, world):
    known = await writer_a.post(f"/Observation/{world.b.lab}/$validate", params={"mode": "delete"}, json={})
    unknown = await writer_a.post("/Observation/nope-not-here/$validate", params={"mode": "delete"}, json={})
    assert known.status_code == unknown.status_code == 404
    assert world.b.lab not in known.text or world.b.lab in f"/Observation/{world.b.lab}"


# -- writes into B's record ---------------------------------------------------------------------


async def test_a_patient_token_cannot_write_into_another_patients_record_through_a_second_reference(
    writer_a, client, world
):
    # subject B, performer A: the row is in A's compartment, but it is B's observation
    body = observation(
        world.b.patient, "laboratory", "planted", performer=[{"reference": f"Patient/{world.a.patient}"}]
    )
    res = await writer_a.post("/Observation", json=body, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 403, res.text
    found = await all_pages(client, "/Observation", {"patient": world.b.patient, "code": "urn:test:code|planted"})
    assert found == set()


async def test_a_patient_token_cannot_add_another_patient_to_its_own_resource(writer_a, client, world):
    body = observation(world.a.patient, "laboratory", "own")
    rid = (await writer_a.post("/Observation", json=body, headers={"Content-Type": FHIR_JSON})).json()["id"]
    moved = {**body, "id": rid, "performer": [{"reference": f"Patient/{world.b.patient}"}]}
    res = await writer_a.put(f"/Observation/{rid}", json=moved, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 403, res.text
    assert "performer" not in (await client.get(f"/Observation/{rid}")).json()


# -- resources outside every patient compartment that name a patient ------------------------------


def _binary(security_context: str) -> dict[str, Any]:
    return {
        "resourceType": "Binary",
        "contentType": "text/plain",
        "data": "c2VjcmV0",
        "securityContext": {"reference": security_context},
    }


@pytest.fixture(scope="module")
async def b_outside(app: Any, world: World) -> dict[str, str]:
    """B's resources of types outside the Patient compartment definition."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver/fhir", headers=bearer(mint_token(app))
    ) as c:
        out = {}
        for who in ("a", "b"):
            pid = getattr(world, who).patient
            out[f"Task.{who}"] = await post(
                c,
                {
                    "resourceType": "Task",
                    "status": "requested",
                    "intent": "order",
                    "for": {"reference": f"Patient/{pid}"},
                },
            )
            out[f"Device.{who}"] = await post(c, {"resourceType": "Device", "patient": {"reference": f"Patient/{pid}"}})
            out[f"Binary.{who}"] = await post(c, _binary(f"Patient/{pid}"))
            out[f"Binary.obs.{who}"] = await post(c, _binary(f"Observation/{getattr(world, who).lab}"))
        return out


async def test_tasks_and_devices_of_another_patient_are_not_readable(as_a, user_a, b_outside):
    for c in (as_a, user_a):
        for rtype in ("Task", "Device"):
            assert (await c.get(f"/{rtype}/{b_outside[rtype + '.b']}")).status_code == 404, rtype
            assert (await c.get(f"/{rtype}/{b_outside[rtype + '.a']}")).status_code == 200, rtype
            found = ids_of(
                await get_ok(c, f"/{rtype}", {"_id": f"{b_outside[rtype + '.a']},{b_outside[rtype + '.b']}"})
            )
            assert found == {b_outside[rtype + ".a"]}
        found = await all_pages(c, "/Task", {"_sort": "-authored-on", "_count": "1"})
        assert b_outside["Task.a"] in found
        assert b_outside["Task.b"] not in found


async def test_binary_of_another_patients_security_context_is_not_readable(as_a, user_a, b_outside):
    for c in (as_a, user_a):
        assert (await c.get(f"/Binary/{b_outside['Binary.b']}")).status_code == 404
        assert (await c.get(f"/Binary/{b_outside['Binary.a']}")).status_code == 200


async def test_binary_whose_security_context_belongs_to_another_patient_is_not_readable(as_a, b_outside):
    assert (await as_a.get(f"/Binary/{b_outside['Binary.obs.b']}")).status_code == 404
    res = await as_a.get(f"/Binary/{b_outside['Binary.obs.b']}", headers={"Accept": "text/plain"})
    assert res.status_code == 404
    assert (await as_a.get(f"/Binary/{b_outside['Binary.obs.a']}")).status_code == 200
    ids = ",".join(b_outside[k] for k in ("Binary.a", "Binary.b", "Binary.obs.a", "Binary.obs.b"))
    found = ids_of(await get_ok(as_a, "/Binary", {"_id": ids}))
    assert found == {b_outside["Binary.a"], b_outside["Binary.obs.a"]}


async def test_stored_bundles_holding_another_patients_data_are_not_readable(as_a, client, world):
    def collection(*resources: dict[str, Any]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}

    about_b = await post(client, collection(observation(world.b.patient, "laboratory", "in-a-bundle")))
    with_b = await post(client, collection({"resourceType": "Patient", "id": world.b.patient}))
    unnamed = await post(
        client, collection({"resourceType": "Patient", "name": [{"family": world.b.family}]})
    )  # a patient without an id: whose, cannot be told
    about_a = await post(client, collection(observation(world.a.patient, "laboratory", "in-a-bundle")))
    for rid in (about_b, with_b, unnamed):
        assert (await as_a.get(f"/Bundle/{rid}")).status_code == 404
    assert (await as_a.get(f"/Bundle/{about_a}")).status_code == 200
    found = ids_of(await get_ok(as_a, "/Bundle", {"_id": f"{about_b},{with_b},{unnamed},{about_a}"}))
    assert found == {about_a}


async def test_a_resource_shared_with_another_patient_is_readable_but_not_writable(writer_a, client, world):
    # A's observation performed by B lies in both records: A reads it (200), and is told
    # plainly that it may not change or delete it (403, not the 404 of "nothing here")
    shared = observation(
        world.a.patient, "laboratory", "shared", performer=[{"reference": f"Patient/{world.b.patient}"}]
    )
    rid = await post(client, shared)
    assert (await writer_a.get(f"/Observation/{rid}")).status_code == 200
    res = await writer_a.put(f"/Observation/{rid}", json={**shared, "id": rid, "status": "amended"})
    assert res.status_code == 403, res.text
    assert (await writer_a.delete(f"/Observation/{rid}")).status_code == 403
    assert (await client.get(f"/Observation/{rid}")).json()["meta"]["versionId"] == "1"


async def test_transactions_cannot_plant_data_in_another_patients_record(writer_a, client, world):
    planted = "urn:test:code|planted-by-transaction"
    both = observation(world.b.patient, "laboratory", "planted-by-transaction")
    both["performer"] = [{"reference": f"Patient/{world.a.patient}"}]
    cases = [
        transaction(("POST", "Observation", both, None)),
        transaction(("PUT", "Observation/planted-by-a-1", {**both, "id": "planted-by-a-1"}, None)),
        transaction(
            ("POST", "Patient", {"resourceType": "Patient"}, "urn:uuid:3a1c8f0e-0d8c-4c5e-9d0a-1b2c3d4e5f60"),
            (
                "POST",
                "Observation",
                {**both, "subject": {"reference": "urn:uuid:3a1c8f0e-0d8c-4c5e-9d0a-1b2c3d4e5f60"}},
                None,
            ),
        ),
        transaction(
            (
                "PUT",
                f"Patient/{world.a.patient}",
                {
                    "resourceType": "Patient",
                    "id": world.a.patient,
                    "link": [{"other": {"reference": f"Patient/{world.b.patient}"}, "type": "seealso"}],
                },
                None,
            )
        ),
    ]
    for bundle in cases:
        res = await writer_a.post("/", json=bundle, headers={"Content-Type": FHIR_JSON})
        assert res.status_code == 403, res.text
    assert await all_pages(client, "/Observation", {"code": planted}) == set()
    assert "link" not in (await client.get(f"/Patient/{world.a.patient}")).json()


async def test_validate_update_of_another_patients_id_answers_as_for_any_id(writer_a, world):
    body = observation(world.a.patient, "laboratory", "x")
    known = await writer_a.post(
        f"/Observation/{world.b.lab}/$validate", params={"mode": "update"}, json={**body, "id": world.b.lab}
    )
    unknown = await writer_a.post("/Observation/nope/$validate", params={"mode": "update"}, json={**body, "id": "nope"})
    assert known.status_code == unknown.status_code
    assert known.json()["issue"] == unknown.json()["issue"]


async def test_wildcard_includes_follow_search_parameters_only(client, world, b_outside):
    # the references indexed for access rules (securityContext, a Bundle's patients) are no search parameters
    found = ids_of(await get_ok(client, "/Patient", {"_id": world.a.patient, "_revinclude": "*"}))
    assert b_outside["Binary.a"] not in found
    found = ids_of(await get_ok(client, "/Binary", {"_id": b_outside["Binary.a"], "_include": "*"}))
    assert found == {b_outside["Binary.a"]}
