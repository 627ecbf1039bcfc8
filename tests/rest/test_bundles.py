"""transaction and batch Bundles (http://hl7.org/fhir/R4/http.html#transaction)."""

from __future__ import annotations

import json
import uuid

FHIR_JSON = "application/fhir+json"


def bundle(kind: str, *entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(resource: dict, full_url: str | None = None, **request: str) -> dict:
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"], **request}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def observation(subject: str) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": subject},
        "valueQuantity": {"value": 70.50, "unit": "kg"},
    }


async def send(client, body: dict, **headers: str):
    return await client.post("", json=body, headers={"Content-Type": FHIR_JSON, **headers})


async def counts(db) -> int:
    return await db.fetchval("SELECT count(*) FROM resource_history")


async def test_transaction_resolves_urn_uuid_references(client):
    pid = f"urn:uuid:{uuid.uuid4()}"
    res = await send(client, bundle("transaction", post({"resourceType": "Patient"}, pid), post(observation(pid))))
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    patient_loc = body["entry"][0]["response"]["location"]
    obs_loc = body["entry"][1]["response"]["location"]
    obs = (await client.get("/" + obs_loc.split("/_history")[0])).json()
    assert obs["subject"]["reference"] == patient_loc.split("/_history")[0]


async def test_failed_entry_rolls_back_everything_and_is_named(client, db):
    before = await counts(db)
    bad = {"resourceType": "Observation", "status": "nonsense", "code": {"text": "x"}}
    res = await send(client, bundle("transaction", post({"resourceType": "Patient"}), post(bad)))
    assert res.status_code == 422
    outcome = res.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[1]" in outcome["issue"][0]["expression"]
    assert await counts(db) == before


async def test_unresolvable_urn_uuid_is_400_and_writes_nothing(client, db):
    before = await counts(db)
    res = await send(client, bundle("transaction", post(observation(f"urn:uuid:{uuid.uuid4()}"))))
    assert res.status_code == 400
    assert await counts(db) == before


async def test_conditional_create_in_transaction_reuses_the_match(client):
    mrn = uuid.uuid4().hex
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]}
    first = await send(client, bundle("transaction", post(patient)))
    location = first.json()["entry"][0]["response"]["location"]
    pid = f"urn:uuid:{uuid.uuid4()}"
    again = await send(
        client,
        bundle("transaction", post(patient, pid, ifNoneExist=f"identifier=urn:mrn|{mrn}"), post(observation(pid))),
    )
    entries = again.json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK"
    assert entries[0]["response"]["location"] == location
    obs = (await client.get("/" + entries[1]["response"]["location"].split("/_history")[0])).json()
    assert obs["subject"]["reference"] == location.split("/_history")[0]


async def test_conditional_reference_is_resolved(client):
    mrn = uuid.uuid4().hex
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]}
    created = (await client.post("/Patient", json=patient, headers={"Content-Type": FHIR_JSON})).json()
    res = await send(client, bundle("transaction", post(observation(f"Patient?identifier=urn:mrn|{mrn}"))))
    assert res.status_code == 200, res.text
    obs = (await client.get("/" + res.json()["entry"][0]["response"]["location"].split("/_history")[0])).json()
    assert obs["subject"]["reference"] == f"Patient/{created['id']}"


async def test_conditional_references_on_our_own_base_url_are_resolved_too(client):
    mrn = uuid.uuid4().hex
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]}
    created = (await client.post("/Patient", json=patient, headers={"Content-Type": FHIR_JSON})).json()
    absolute = f"{str(client.base_url).rstrip('/')}/Patient?identifier=urn:mrn|{mrn}"
    first = observation(absolute)  # alone in its entry
    second = {**observation(f"Patient?identifier=urn:mrn|{mrn}"), "focus": [{"reference": absolute}]}
    res = await send(client, bundle("transaction", post(first), post(second)))
    assert res.status_code == 200, res.text
    for entry in res.json()["entry"]:
        obs = (await client.get("/" + entry["response"]["location"].split("/_history")[0])).json()
        refs = [obs["subject"]["reference"]] + [f["reference"] for f in obs.get("focus", [])]
        assert refs and all(r == f"Patient/{created['id']}" for r in refs)


async def test_conditional_reference_without_match_fails(client):
    res = await send(client, bundle("transaction", post(observation(f"Patient?identifier=urn:mrn|{uuid.uuid4().hex}"))))
    assert res.status_code == 412


async def test_stale_if_match_in_transaction_rolls_back(client, db):
    created = (
        await client.post("/Patient", json={"resourceType": "Patient"}, headers={"Content-Type": FHIR_JSON})
    ).json()
    before = await counts(db)
    put = {
        "resource": {**created, "active": True},
        "request": {"method": "PUT", "url": f"Patient/{created['id']}", "ifMatch": 'W/"7"'},
    }
    res = await send(client, bundle("transaction", post({"resourceType": "Patient"}), put))
    assert res.status_code == 412
    assert await counts(db) == before


async def test_transaction_delete_put_and_get(client):
    a = (await client.post("/Patient", json={"resourceType": "Patient"}, headers={"Content-Type": FHIR_JSON})).json()
    b = (await client.post("/Patient", json={"resourceType": "Patient"}, headers={"Content-Type": FHIR_JSON})).json()
    res = await send(
        client,
        bundle(
            "transaction",
            {"request": {"method": "GET", "url": f"Patient/{b['id']}"}},
            {"resource": {**b, "gender": "female"}, "request": {"method": "PUT", "url": f"Patient/{b['id']}"}},
            {"request": {"method": "DELETE", "url": f"Patient/{a['id']}"}},
        ),
    )
    assert res.status_code == 200, res.text
    entries = res.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["200 OK", "200 OK", "204 No Content"]
    assert entries[0]["resource"]["gender"] == "female"  # GET runs after the PUT
    assert (await client.get(f"/Patient/{a['id']}")).status_code == 410


async def test_batch_entries_succeed_or_fail_on_their_own(client):
    bad = {"resourceType": "Observation", "status": "nonsense", "code": {"text": "x"}}
    res = await send(
        client,
        bundle(
            "batch",
            post({"resourceType": "Patient"}),
            post(bad),
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        ),
    )
    assert res.status_code == 200
    entries = res.json()["entry"]
    assert entries[0]["response"]["status"] == "201 Created"
    assert entries[1]["response"]["status"] == "422"
    assert entries[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[2]["response"]["status"] == "404"


async def test_non_bundle_or_wrong_type_is_400(client):
    assert (await send(client, {"resourceType": "Patient"})).status_code == 400
    assert (await send(client, bundle("collection"))).status_code == 400


async def test_entry_without_request_is_400(client):
    res = await send(
        client, {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient"}}]}
    )
    assert res.status_code == 400


async def test_synthea_patient_bundle_loads_whole(client, shared_fhir):
    path = sorted((shared_fhir / "synthea").glob("*.json"))
    patient_file = next(p for p in path if not p.name.startswith("0-"))
    data = json.loads(patient_file.read_bytes())
    res = await send(client, data)
    assert res.status_code == 200, res.text[:500]
    entries = res.json()["entry"]
    assert len(entries) == len(data["entry"])
    assert all(e["response"]["status"] in ("201 Created", "200 OK") for e in entries)


async def test_parallel_transactions_with_same_if_match_exactly_one_wins(client):
    import asyncio

    created = (
        await client.post("/Patient", json={"resourceType": "Patient"}, headers={"Content-Type": FHIR_JSON})
    ).json()
    rid = created["id"]
    for version in range(1, 21):
        marks = [uuid.uuid4().hex, uuid.uuid4().hex]

        def tx(mark: str, gender: str, version: int = version) -> dict:
            put = {
                "resource": {"resourceType": "Patient", "id": rid, "gender": gender, "name": [{"text": mark}]},
                "request": {"method": "PUT", "url": f"Patient/{rid}", "ifMatch": f'W/"{version}"'},
            }
            return bundle("transaction", post({"resourceType": "Basic", "code": {"text": mark}}), put)

        results = await asyncio.gather(send(client, tx(marks[0], "male")), send(client, tx(marks[1], "female")))
        codes = [r.status_code for r in results]
        assert sorted(codes) == [200, 412], codes
        winner = codes.index(200)
        current = (await client.get(f"/Patient/{rid}")).json()
        assert current["meta"]["versionId"] == str(version + 1)
        assert current["gender"] == ["male", "female"][winner]
        for i, mark in enumerate(marks):  # the loser's create was rolled back with it
            found = (await client.get(f"/Basic?_content={mark}")).json()
            assert len(found["entry"]) == (1 if i == winner else 0)


async def test_put_entry_with_a_different_body_id_fails_the_transaction(client, db):
    before = await counts(db)
    put = {"resource": {"resourceType": "Patient", "id": "other"}, "request": {"method": "PUT", "url": "Patient/mine"}}
    res = await send(client, bundle("transaction", post({"resourceType": "Patient"}), put))
    assert res.status_code == 400
    assert await counts(db) == before


async def test_put_entry_without_body_id_takes_the_url_id(client):
    rid = uuid.uuid4().hex
    put = {"resource": {"resourceType": "Patient"}, "request": {"method": "PUT", "url": f"Patient/{rid}"}}
    res = await send(client, bundle("transaction", put))
    assert res.status_code == 200
    assert (await client.get(f"/Patient/{rid}")).status_code == 200
