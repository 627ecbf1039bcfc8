"""Prefer: respond-async (R4 async.html): each kind of request answered through the status
URL exactly as it is answered synchronously."""

from __future__ import annotations

import uuid

from tests.rest.asyncflow import run

FHIR = {"Content-Type": "application/fhir+json"}


def _transaction(family: str) -> dict:
    patient = {"resourceType": "Patient", "name": [{"family": family}]}
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": family},
        "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
                "resource": patient,
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": obs, "request": {"method": "POST", "url": "Observation"}},
        ],
    }


def _statuses(bundle: dict) -> list[str]:
    return [e["response"]["status"] for e in bundle["entry"]]


async def test_an_async_transaction_answers_the_transaction_response_and_applies_it(client):
    family = f"Async{uuid.uuid4().hex[:8]}"
    sync = await client.post("", json=_transaction("Sync" + family), headers=FHIR)
    res = await run(client, "POST", "", json=_transaction(family), headers=FHIR)
    assert res.status_code == sync.status_code == 200
    assert res.headers["content-type"].startswith("application/fhir+json")
    body = res.json()
    assert body["type"] == "transaction-response"
    assert _statuses(body) == _statuses(sync.json()) == ["201 Created", "201 Created"]
    found = await client.get("/Observation", params={"code:text": family, "subject.name": family})
    assert found.json()["total"] == 1


async def test_an_async_transaction_that_fails_answers_its_outcome_and_applies_nothing(client):
    family = f"Async{uuid.uuid4().hex[:8]}"
    bundle = _transaction(family)
    bundle["entry"][1]["resource"]["status"] = "not-a-status"
    sync = await client.post("", json=bundle, headers=FHIR)
    res = await run(client, "POST", "", json=bundle, headers=FHIR)
    assert res.status_code == sync.status_code
    assert 400 <= res.status_code < 500
    assert res.json()["resourceType"] == "OperationOutcome"
    found = await client.get("/Patient", params={"family": family})
    assert found.json()["total"] == 0


async def test_an_async_batch_answers_each_entry_as_synchronously(client):
    family = f"Async{uuid.uuid4().hex[:8]}"
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "name": [{"family": family}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "GET", "url": f"Patient/{uuid.uuid4().hex}"}},
            {
                "resource": {"resourceType": "Patient", "gender": "nope"},
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    sync = await client.post("", json=bundle, headers=FHIR)
    res = await run(client, "POST", "", json=bundle, headers=FHIR)
    assert res.status_code == sync.status_code == 200
    assert res.json()["type"] == "batch-response"
    assert [s[:3] for s in _statuses(res.json())] == [s[:3] for s in _statuses(sync.json())]
    assert _statuses(res.json())[0] == "201 Created"
    found = await client.get("/Patient", params={"family": family})
    assert found.json()["total"] == 2  # the synchronous batch's and the asynchronous one's


async def _observations(client, family: str, n: int) -> str:
    patient = (
        await client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": family}]}, headers=FHIR)
    ).json()
    for i in range(n):
        obs = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": family},
            "subject": {"reference": f"Patient/{patient['id']}"},
            "valueQuantity": {"value": i},
        }
        assert (await client.post("/Observation", json=obs, headers=FHIR)).status_code == 201
    return patient["id"]


def _ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


async def test_an_async_search_answers_the_same_searchset(client):
    family = f"Async{uuid.uuid4().hex[:8]}"
    await _observations(client, family, 5)
    params = {"code:text": family, "_count": "3", "_total": "accurate"}
    sync = await client.get("/Observation", params=params)
    res = await run(client, "GET", "/Observation", params=params)
    assert res.status_code == 200
    assert res.json()["type"] == "searchset"
    assert res.json()["total"] == sync.json()["total"] == 5
    assert _ids(res.json()) == _ids(sync.json())
    assert [link["relation"] for link in res.json()["link"]] == [link["relation"] for link in sync.json()["link"]]


async def test_an_async_search_pages_on_like_a_synchronous_one(client):
    family = f"Async{uuid.uuid4().hex[:8]}"
    await _observations(client, family, 5)
    first = (await client.get("/Observation", params={"code:text": family, "_count": "3"})).json()
    following = next(link["url"] for link in first["link"] if link["relation"] == "next")
    res = await run(client, "GET", following)
    assert _ids(res.json()) == _ids((await client.get(following)).json())
    assert len(set(_ids(res.json())) | set(_ids(first))) == 5


async def test_an_async_post_search_answers_the_same_searchset(client):
    family = f"Async{uuid.uuid4().hex[:8]}"
    await _observations(client, family, 2)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    sync = await client.post("/Observation/_search", content=f"code:text={family}", headers=form)
    res = await run(client, "POST", "/Observation/_search", content=f"code:text={family}", headers=form)
    assert res.status_code == 200
    assert sorted(_ids(res.json())) == sorted(_ids(sync.json()))
    assert len(_ids(res.json())) == 2


async def test_an_async_everything_answers_the_same_bundle(client):
    family = f"Async{uuid.uuid4().hex[:8]}"
    pid = await _observations(client, family, 3)
    sync = await client.get(f"/Patient/{pid}/$everything")
    res = await run(client, "GET", f"/Patient/{pid}/$everything")
    assert res.status_code == 200
    assert sorted(_ids(res.json())) == sorted(_ids(sync.json()))
    assert len(_ids(res.json())) == 4


async def test_an_async_request_refused_synchronously_is_refused_the_same_way(client):
    res = await run(
        client,
        "GET",
        "/Observation",
        params={"no-such-parameter": "1"},
        headers={"Prefer": "respond-async, handling=strict"},
    )
    sync = await client.get("/Observation", params={"no-such-parameter": "1"}, headers={"Prefer": "handling=strict"})
    assert res.status_code == sync.status_code == 400
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_a_request_without_the_header_is_answered_at_once(client):
    res = await client.get("/Observation", params={"_count": "1"})
    assert res.status_code == 200
    assert "content-location" not in res.headers


def _large_transaction(family: str, n: int) -> dict:
    """A transaction whose body is over the size handled in a worker thread (rest/offload.py)."""
    note = "x" * 1000
    entry = {
        "resource": {"resourceType": "Patient", "name": [{"family": family, "text": note}]},
        "request": {"method": "POST", "url": "Patient"},
    }
    return {"resourceType": "Bundle", "type": "transaction", "entry": [entry] * n}


async def test_a_large_async_transaction_is_applied_once_with_its_answer(client):
    family = f"Async{uuid.uuid4().hex[:8]}"
    res = await run(client, "POST", "", json=_large_transaction(family, 300), headers=FHIR)
    assert res.status_code == 200, res.text[:300]
    assert _statuses(res.json()) == ["201 Created"] * 300
    found = await client.get("/Patient", params={"family": family, "_summary": "count"})
    assert found.json()["total"] == 300
