"""Scopes are enforced on every interaction: type-level rights (403), rows outside a
restriction (404, or 403 for a write that would land outside it), bundles whole."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

from tests.auth.world import FHIR_JSON, IDENT, LAB, observation, transaction


async def post(c: httpx.AsyncClient, resource: dict[str, Any]) -> httpx.Response:
    return await c.post(f"/{resource['resourceType']}", json=resource, headers={"Content-Type": FHIR_JSON})


async def count_with_code(client: httpx.AsyncClient, code: str) -> int:
    res = await client.get("/Observation", params={"code": f"urn:test:code|{code}", "_summary": "count"})
    return res.json()["total"]


# -- v1 scopes --------------------------------------------------------------------------------


async def test_v1_patient_read_scope_reads_the_compartment_but_cannot_write(client_for, world):
    c = await client_for("patient/*.read", patient=world.a.patient)
    assert (await c.get(f"/Observation/{world.a.lab}")).status_code == 200
    assert (await c.get(f"/Observation/{world.b.lab}")).status_code == 404
    res = await post(c, observation(world.a.patient, "laboratory", uuid.uuid4().hex))
    assert res.status_code == 403


async def test_v1_user_write_scope_writes_but_cannot_read(client_for, world):
    c = await client_for("user/Observation.write")
    res = await post(c, observation(world.a.patient, "laboratory", uuid.uuid4().hex))
    assert res.status_code == 201, res.text
    assert (await c.get(f"/Observation/{res.json()['id']}")).status_code == 403
    assert (await c.get("/Observation")).status_code == 403
    assert (await post(c, {"resourceType": "Patient"})).status_code == 403


async def test_a_type_outside_the_scopes_is_403(client_for, world):
    c = await client_for("user/Observation.rs")
    assert (await c.get(f"/Patient/{world.a.patient}")).status_code == 403
    assert (await c.get("/Condition")).status_code == 403
    assert (await c.get(f"/Patient/{world.a.patient}/_history")).status_code == 403
    assert (await c.get("/Condition/_history")).status_code == 403


# -- rights before validation ------------------------------------------------------------------------


async def test_a_refused_create_is_403_before_validation(client_for):
    c = await client_for("user/Observation.rs")
    res = await post(c, {"resourceType": "Observation", "status": "not-a-status", "bogus": 1})
    assert res.status_code == 403
    assert "bogus" not in res.text


async def test_a_refused_update_is_403_before_validation(client_for, world):
    c = await client_for("user/Observation.rs")
    res = await c.put(f"/Observation/{world.a.lab}", json={"resourceType": "Observation", "id": "other"})
    assert res.status_code == 403


async def test_validate_needs_the_types_rights(client_for):
    reader = await client_for("user/Observation.rs")
    body = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert (await reader.post("/Observation/$validate", json=body)).status_code == 403
    writer = await client_for("user/Observation.cu")
    assert (await writer.post("/Observation/$validate", json=body)).status_code == 200


async def test_reindex_is_for_system_tokens_only(client_for):
    c = await client_for("user/*.cruds")
    assert (await c.post("/Observation/$reindex")).status_code == 403


# -- patient-context writes ----------------------------------------------------------------------------


async def test_patient_token_creates_inside_its_compartment(writer_a, world):
    res = await post(writer_a, observation(world.a.patient, "laboratory", uuid.uuid4().hex))
    assert res.status_code == 201, res.text


async def test_patient_token_cannot_create_for_another_patient(writer_a, client, world):
    code = uuid.uuid4().hex
    res = await post(writer_a, observation(world.b.patient, "laboratory", code))
    assert res.status_code == 403
    assert await count_with_code(client, code) == 0  # rolled back


async def test_patient_token_cannot_create_outside_any_compartment(writer_a):
    res = await post(writer_a, {"resourceType": "Observation", "status": "final", "code": {"text": "loose"}})
    assert res.status_code == 403


async def test_patient_token_may_not_move_its_resource_to_another_patient(writer_a, client, world):
    created = (await post(writer_a, observation(world.a.patient, "laboratory", uuid.uuid4().hex))).json()
    moved = {**created, "subject": {"reference": f"Patient/{world.b.patient}"}}
    res = await writer_a.put(f"/Observation/{created['id']}", json=moved)
    assert res.status_code == 403
    current = (await client.get(f"/Observation/{created['id']}")).json()
    assert current["subject"]["reference"] == f"Patient/{world.a.patient}"
    assert current["meta"]["versionId"] == "1"


async def test_patient_token_changing_another_patients_resource_gets_404(writer_a, client, world):
    body = observation(world.a.patient, "laboratory", world.a.code) | {"id": world.b.vitals}
    assert (await writer_a.put(f"/Observation/{world.b.vitals}", json=body)).status_code == 404
    patch = json.dumps([{"op": "replace", "path": "/status", "value": "amended"}])
    res = await writer_a.patch(
        f"/Observation/{world.b.vitals}", content=patch, headers={"Content-Type": "application/json-patch+json"}
    )
    assert res.status_code == 404
    assert (await writer_a.delete(f"/Observation/{world.b.vitals}")).status_code == 404
    current = (await client.get(f"/Observation/{world.b.vitals}")).json()
    assert current["meta"]["versionId"] == "1"


async def test_patient_token_deletes_its_own_resource(writer_a, client, world):
    created = (await post(writer_a, observation(world.a.patient, "laboratory", uuid.uuid4().hex))).json()
    assert (await writer_a.delete(f"/Observation/{created['id']}")).status_code in (200, 204)
    assert (await client.get(f"/Observation/{created['id']}")).status_code == 410


async def test_resources_outside_any_compartment_are_readable_not_writable(writer_a, world):
    assert (await writer_a.get(f"/Medication/{world.medication}")).status_code == 200
    assert (await writer_a.get(f"/Organization/{world.organization}")).status_code == 200
    assert (await writer_a.get(f"/Practitioner/{world.practitioner}")).status_code == 200
    assert (await post(writer_a, {"resourceType": "Medication"})).status_code == 403
    org = {"resourceType": "Organization", "id": world.organization, "name": "renamed"}
    assert (await writer_a.put(f"/Organization/{world.organization}", json=org)).status_code == 403
    assert (await writer_a.delete(f"/Practitioner/{world.practitioner}")).status_code == 403


# -- v2 criteria on writes ---------------------------------------------------------------------


async def test_criteria_scope_cannot_create_outside_its_criteria(client_for, client, world):
    c = await client_for(f"patient/Observation.cu?category={LAB}", patient=world.a.patient)
    code = uuid.uuid4().hex
    assert (await post(c, observation(world.a.patient, "vital-signs", code))).status_code == 403
    assert await count_with_code(client, code) == 0
    assert (await post(c, observation(world.a.patient, "laboratory", code))).status_code == 201


async def test_criteria_scope_cannot_update_outside_its_criteria(client_for, client, world):
    c = await client_for(f"patient/Observation.cru?category={LAB}", patient=world.a.patient)
    created = (await post(c, observation(world.a.patient, "laboratory", uuid.uuid4().hex))).json()
    vital = {**created, "category": [{"coding": [{"system": LAB.split("|")[0], "code": "vital-signs"}]}]}
    assert (await c.put(f"/Observation/{created['id']}", json=vital)).status_code == 403
    body = observation(world.a.patient, "laboratory", world.a.code) | {"id": world.a.vitals}
    assert (await c.put(f"/Observation/{world.a.vitals}", json=body)).status_code == 404


# -- searches touching other types -----------------------------------------------------------------


async def test_chain_to_a_type_without_rights_is_403(client_for, world):
    c = await client_for("user/Observation.rs")
    res = await c.get("/Observation", params={"subject:Patient.family": world.a.family})
    assert res.status_code == 403


async def test_has_on_a_type_without_rights_is_403(client_for, world):
    c = await client_for("user/Patient.rs")
    res = await c.get("/Patient", params={"_has:Observation:subject:code": f"urn:test:code|{world.b.code}"})
    assert res.status_code == 403


async def test_list_without_list_rights_is_403(client_for, world):
    c = await client_for("user/Observation.rs")
    assert (await c.get("/Observation", params={"_list": world.a.list})).status_code == 403


async def test_includes_of_types_without_rights_are_left_out(client_for, world):
    c = await client_for("user/Observation.rs")
    res = await c.get("/Observation", params={"_id": world.a.lab, "_include": "Observation:subject"})
    assert res.status_code == 200
    assert {e["resource"]["id"] for e in res.json()["entry"]} == {world.a.lab}


# -- bundles ---------------------------------------------------------------------------------------


async def test_a_transaction_with_one_forbidden_entry_fails_whole(client_for, client, world):
    c = await client_for("user/Observation.crus")
    code = uuid.uuid4().hex
    bundle = transaction(
        ("POST", "Observation", observation(world.a.patient, "laboratory", code)),
        ("POST", "Condition", {"resourceType": "Condition", "subject": {"reference": f"Patient/{world.a.patient}"}}),
    )
    res = await c.post("/", json=bundle)
    assert res.status_code == 403, res.text
    assert await count_with_code(client, code) == 0


async def test_a_transaction_writing_outside_the_compartment_fails_whole(writer_a, client, world):
    code = uuid.uuid4().hex
    bundle = transaction(
        ("POST", "Observation", observation(world.a.patient, "laboratory", code)),
        ("POST", "Observation", observation(world.b.patient, "laboratory", code)),
    )
    res = await writer_a.post("/", json=bundle)
    assert res.status_code == 403, res.text
    assert await count_with_code(client, code) == 0


async def test_a_transaction_touching_another_patients_resource_fails_whole(writer_a, client, world):
    code = uuid.uuid4().hex
    bundle = transaction(
        ("POST", "Observation", observation(world.a.patient, "laboratory", code)),
        ("DELETE", f"Observation/{world.b.vitals}", None),
    )
    res = await writer_a.post("/", json=bundle)
    assert res.status_code == 404, res.text
    assert await count_with_code(client, code) == 0
    assert (await client.get(f"/Observation/{world.b.vitals}")).status_code == 200


async def test_a_batch_refuses_only_its_forbidden_entries(writer_a, client, world):
    code = uuid.uuid4().hex
    bundle = transaction(
        ("POST", "Observation", observation(world.a.patient, "laboratory", code)),
        ("POST", "Observation", observation(world.b.patient, "laboratory", code)),
        ("POST", "Medication", {"resourceType": "Medication"}),
        ("GET", f"Observation/{world.b.lab}", None),
    )
    bundle["type"] = "batch"
    res = await writer_a.post("/", json=bundle)
    assert res.status_code == 200, res.text
    statuses = [e["response"]["status"][:3] for e in res.json()["entry"]]
    assert statuses == ["201", "403", "403", "404"]
    assert await count_with_code(client, code) == 1


async def test_a_batch_if_none_exist_matching_another_patient_creates(writer_a, world):
    bundle = transaction(("POST", "Observation", observation(world.a.patient, "laboratory", uuid.uuid4().hex)))
    bundle["type"] = "batch"
    bundle["entry"][0]["request"]["ifNoneExist"] = f"identifier={IDENT}|{world.b.obs_ident}"
    res = await writer_a.post("/", json=bundle)
    entry = res.json()["entry"][0]
    assert entry["response"]["status"].startswith("201")
    assert world.b.lab not in json.dumps(entry)


# -- sorted fast path --------------------------------------------------------------------------------


async def test_patient_token_sorted_pages_are_in_order_and_complete(client_for, client):
    pid = (await post(client, {"resourceType": "Patient"})).json()["id"]
    other = (await post(client, {"resourceType": "Patient"})).json()["id"]
    code = uuid.uuid4().hex
    made = []
    for day in range(1, 8):
        for who in (pid, other):
            body = observation(who, "laboratory", code) | {"effectiveDateTime": f"2024-02-{day:02d}T00:00:00Z"}
            rid = (await post(client, body)).json()["id"]
            if who == pid:
                made.append(rid)
    undated = observation(pid, "laboratory", code)
    del undated["effectiveDateTime"]
    assert (await post(client, undated)).status_code == 201  # no date: sorts last
    c = await client_for("patient/Observation.rs", patient=pid)

    async def pages(sort: str) -> list[str]:
        seen: list[str] = []
        res = await c.get("/Observation", params={"_sort": sort, "_count": "3"})
        while True:
            bundle = res.json()
            seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
            nxt = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
            if nxt is None:
                return seen
            res = await c.get(nxt)

    down, up = await pages("-date"), await pages("date")
    assert down[:7] == list(reversed(made))
    assert up[:7] == made
    assert len(down) == len(up) == 8
    assert down[7] == up[7]  # the undated one, last either way
