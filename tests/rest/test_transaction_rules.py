"""Transaction rules (R4 http.html#trules, Bundle invariant bdl-7).

Entries that write (DELETE, POST, PUT, PATCH) may not resolve to the same resource,
fullUrls are unique, a request url has no segments beyond `Type/id`, and a
conditional PUT's body id must agree with its match, as on the REST path. Each
failure is a 400 OperationOutcome and writes nothing.
"""

from __future__ import annotations

import uuid

import pytest

SYSTEM = "urn:trules"


def transaction(*entries: dict, kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def patient(value: str, **extra: object) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}], **extra}


def put(url: str, resource: dict) -> dict:
    return {"resource": resource, "request": {"method": "PUT", "url": url}}


def delete(url: str) -> dict:
    return {"request": {"method": "DELETE", "url": url}}


async def created(client) -> tuple[str, str]:
    """A new Patient with its own identifier value; returns (id, value)."""
    value = uuid.uuid4().hex
    res = await client.post("/Patient", json=patient(value))
    return res.json()["id"], value


async def history_rows(db) -> int:
    return await db.fetchval("SELECT count(*) FROM resource_history")


async def refused(client, db, body: dict) -> None:
    """The bundle is a 400 OperationOutcome and nothing was written."""
    before = await history_rows(db)
    res = await client.post("", json=body)
    assert res.status_code == 400, res.text
    assert res.json()["resourceType"] == "OperationOutcome"
    assert await history_rows(db) == before


async def test_two_puts_of_the_same_resource_fail_the_transaction(client, db):
    rid, value = await created(client)
    body = patient(value, id=rid)
    await refused(client, db, transaction(put(f"Patient/{rid}", body), put(f"Patient/{rid}", {**body, "active": True})))


async def test_a_put_and_a_delete_of_the_same_resource_fail_the_transaction(client, db):
    rid, value = await created(client)
    await refused(client, db, transaction(put(f"Patient/{rid}", patient(value, id=rid)), delete(f"Patient/{rid}")))


async def test_a_conditional_delete_resolving_to_a_put_target_fails_the_transaction(client, db):
    rid, value = await created(client)
    entries = [put(f"Patient/{rid}", patient(value, id=rid)), delete(f"Patient?identifier={SYSTEM}|{value}")]
    await refused(client, db, transaction(*entries))


async def test_two_conditional_entries_resolving_to_one_resource_fail_the_transaction(client, db):
    rid, value = await created(client)
    by_identifier = put(f"Patient?identifier={SYSTEM}|{value}", patient(value, active=True))
    by_id = put(f"Patient?_id={rid}", patient(value, active=False))
    await refused(client, db, transaction(by_identifier, by_id))


async def test_a_matched_if_none_exist_and_a_put_of_the_match_fail_the_transaction(client, db):
    rid, value = await created(client)
    conditional_create = {
        "resource": patient(value),
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|{value}"},
    }
    await refused(client, db, transaction(conditional_create, put(f"Patient/{rid}", patient(value, id=rid))))


async def test_two_conditional_creates_with_the_same_criteria_fail_the_transaction(client, db):
    value = uuid.uuid4().hex
    entry = {
        "resource": patient(value),
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|{value}"},
    }
    await refused(client, db, transaction(entry, entry))


async def test_reading_a_resource_that_the_transaction_updates_is_not_an_overlap(client):
    rid, value = await created(client)
    read = {"request": {"method": "GET", "url": f"Patient/{rid}"}}
    res = await client.post("", json=transaction(put(f"Patient/{rid}", patient(value, id=rid, active=True)), read))
    assert res.status_code == 200, res.text


@pytest.mark.parametrize("kind", ["transaction", "batch"])
async def test_two_entries_with_the_same_full_url_fail_the_bundle(client, db, kind):
    full_url = f"urn:uuid:{uuid.uuid4()}"
    entry = {
        "fullUrl": full_url,
        "resource": patient(uuid.uuid4().hex),
        "request": {"method": "POST", "url": "Patient"},
    }
    other = {**entry, "resource": patient(uuid.uuid4().hex)}
    await refused(client, db, transaction(entry, other, kind=kind))


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("PUT", "Patient/{rid}/foo"),
        ("PUT", "Patient/{rid}/_history/1"),
        ("DELETE", "Patient/{rid}/foo"),
        ("PATCH", "Patient/{rid}/_history/1"),
        ("POST", "Patient/{rid}"),
        ("PUT", "Patient/{rid}?active=true"),
        ("PUT", "Patient/not an id"),
    ],
)
async def test_extra_url_segments_are_refused(client, db, method, url):
    rid, value = await created(client)
    entry: dict = {"request": {"method": method, "url": url.format(rid=rid)}}
    if method in ("PUT", "POST"):
        entry["resource"] = patient(value, id=rid) if method == "PUT" else patient(value)
    elif method == "PATCH":
        entry["resource"] = {"resourceType": "Parameters", "parameter": []}
    await refused(client, db, transaction(entry))


async def test_conditional_put_in_a_transaction_with_another_body_id_is_400(client, db):
    rid, value = await created(client)
    other, _ = await created(client)
    await refused(client, db, transaction(put(f"Patient?identifier={SYSTEM}|{value}", patient(value, id=other))))
    assert (await client.get(f"/Patient/{rid}")).json()["meta"]["versionId"] == "1"


async def test_conditional_put_over_rest_with_another_body_id_is_400(client):
    rid, value = await created(client)
    other, _ = await created(client)
    res = await client.put(f"/Patient?identifier={SYSTEM}|{value}", json=patient(value, id=other))
    assert res.status_code == 400 and res.json()["resourceType"] == "OperationOutcome"
    assert (await client.get(f"/Patient/{rid}")).json()["meta"]["versionId"] == "1"


async def test_conditional_put_in_a_transaction_with_the_matched_id_updates_it(client):
    rid, value = await created(client)
    changed = patient(value, id=rid, gender="other")  # identical content would write no version
    res = await client.post("", json=transaction(put(f"Patient?identifier={SYSTEM}|{value}", changed)))
    assert res.status_code == 200, res.text
    assert res.json()["entry"][0]["response"]["location"].startswith(f"Patient/{rid}/_history/2")
