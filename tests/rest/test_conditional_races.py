"""Conditional create and update are race-free (one resource however many clients race).

Eight clients send the same conditional request at once through the ASGI app, whose
pool gives each its own connection, so the requests really run concurrently; the
criteria's advisory lock must let exactly one of them create.
"""

from __future__ import annotations

import asyncio
import uuid

CLIENTS = 8
SYSTEM = "urn:race"


def patient(value: str) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}]}


async def matching(client, value: str) -> int:
    bundle = (await client.get("/Patient", params={"identifier": f"{SYSTEM}|{value}"})).json()
    return bundle["total"]


def transaction(entry: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}


async def test_parallel_if_none_exist_creates_exactly_one(client):
    value = uuid.uuid4().hex
    header = {"If-None-Exist": f"identifier={SYSTEM}|{value}"}
    results = await asyncio.gather(
        *(client.post("/Patient", json=patient(value), headers=header) for _ in range(CLIENTS))
    )
    assert sorted(r.status_code for r in results) == [200] * (CLIENTS - 1) + [201]
    assert len({r.json()["id"] for r in results}) == 1
    assert await matching(client, value) == 1


async def test_parallel_conditional_updates_create_exactly_one(client):
    value = uuid.uuid4().hex
    url = f"/Patient?identifier={SYSTEM}|{value}"
    results = await asyncio.gather(*(client.put(url, json=patient(value)) for _ in range(CLIENTS)))
    assert sorted(r.status_code for r in results) == [200] * (CLIENTS - 1) + [201]
    assert len({r.json()["id"] for r in results}) == 1
    assert await matching(client, value) == 1


async def test_parallel_transactions_with_if_none_exist_create_exactly_one(client):
    value = uuid.uuid4().hex
    entry = {
        "resource": patient(value),
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|{value}"},
    }
    results = await asyncio.gather(*(client.post("", json=transaction(entry)) for _ in range(CLIENTS)))
    assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200]
    statuses = sorted(r.json()["entry"][0]["response"]["status"] for r in results)
    assert statuses == ["200 OK"] * (CLIENTS - 1) + ["201 Created"]
    assert await matching(client, value) == 1


async def test_parallel_transactions_with_conditional_put_create_exactly_one(client):
    value = uuid.uuid4().hex
    entry = {"resource": patient(value), "request": {"method": "PUT", "url": f"Patient?identifier={SYSTEM}|{value}"}}
    results = await asyncio.gather(*(client.post("", json=transaction(entry)) for _ in range(CLIENTS)))
    assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200]
    assert await matching(client, value) == 1


async def test_parallel_batches_with_if_none_exist_create_exactly_one(client):
    value = uuid.uuid4().hex
    entry = {
        "resource": patient(value),
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|{value}"},
    }
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [entry]}
    results = await asyncio.gather(*(client.post("", json=batch) for _ in range(CLIENTS)))
    statuses = sorted(r.json()["entry"][0]["response"]["status"] for r in results)
    assert statuses == ["200 OK"] * (CLIENTS - 1) + ["201 Created"]
    assert await matching(client, value) == 1


async def test_rest_and_transaction_conditional_creates_share_one_lock(client):
    value = uuid.uuid4().hex
    criteria = f"identifier={SYSTEM}|{value}"
    entry = {"resource": patient(value), "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria}}
    rest = [client.post("/Patient", json=patient(value), headers={"If-None-Exist": criteria}) for _ in range(4)]
    bundles = [client.post("", json=transaction(entry)) for _ in range(4)]
    results = await asyncio.gather(*rest, *bundles)
    assert all(r.status_code in (200, 201) for r in results)
    assert await matching(client, value) == 1


async def test_criteria_in_another_order_share_the_lock(client):
    value = uuid.uuid4().hex
    family = f"Race{uuid.uuid4().hex[:12]}"
    body = {**patient(value), "name": [{"family": family}]}
    orders = [f"identifier={SYSTEM}|{value}&family={family}", f"family={family}&identifier={SYSTEM}|{value}"]
    results = await asyncio.gather(
        *(client.post("/Patient", json=body, headers={"If-None-Exist": orders[i % 2]}) for i in range(CLIENTS))
    )
    assert sorted(r.status_code for r in results) == [200] * (CLIENTS - 1) + [201]
    assert await matching(client, value) == 1
