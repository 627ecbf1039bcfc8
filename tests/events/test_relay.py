"""The relay: committed events become per-subscription notifications, matched by search."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from headless_ehr.events.relay import Relay

from .conftest import FHIR_JSON, code, create, notified, observation, settle, subscription, wait_notified


async def _subscribe(client: httpx.AsyncClient, made: list[str], criteria: str, **extra: Any) -> str:
    sid = (await create(client, subscription(criteria, **extra)))["id"]
    made.append(sid)
    return sid


async def test_a_matching_create_is_notified_with_its_event(client, db, subscriptions) -> None:
    c = code()
    sid = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{c}")
    obs = await create(client, observation(c))
    rows = await wait_notified(db, sid, 1)
    assert [(r["resource_type"], r["resource_id"], r["version_id"], r["interaction"]) for r in rows] == [
        ("Observation", obs["id"], 1, "create")
    ]
    event_id = await db.fetchval("SELECT event_id FROM outbox WHERE seq = $1", rows[0]["event_seq"])
    assert rows[0]["event_id"] == event_id


async def test_a_non_matching_change_is_not_notified(app, client, db, subscriptions) -> None:
    sid = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{code()}")
    await create(client, observation(code()))
    await create(client, {"resourceType": "Patient", "name": [{"family": code()}]})
    await settle(app)
    assert await notified(db, sid) == []


async def test_event_numbers_count_from_one_in_commit_order(app, client, db, subscriptions) -> None:
    c = code()
    sid = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{c}")
    first = await create(client, observation(c))
    second = await create(client, observation(c))
    res = await client.put(f"/Observation/{first['id']}", json={**first, "status": "amended"}, headers=FHIR_JSON)
    assert res.status_code == 200
    rows = await wait_notified(db, sid, 3)
    assert [r["event_number"] for r in rows] == [1, 2, 3]
    assert [(r["resource_id"], r["interaction"]) for r in rows] == [
        (first["id"], "create"),
        (second["id"], "create"),
        (first["id"], "update"),
    ]
    state = await db.fetchval("SELECT events_since_start FROM subscription_state WHERE id = $1", sid)
    assert state == 3


async def test_a_patch_is_notified_as_a_patch(client, db, subscriptions) -> None:
    c = code()
    sid = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{c}")
    obs = await create(client, observation(c))
    patch = [{"op": "replace", "path": "/status", "value": "amended"}]
    res = await client.patch(
        f"/Observation/{obs['id']}", json=patch, headers={"Content-Type": "application/json-patch+json"}
    )
    assert res.status_code == 200, res.text
    rows = await wait_notified(db, sid, 2)
    assert [r["interaction"] for r in rows] == ["create", "patch"]


async def test_a_change_that_leaves_the_criteria_is_not_notified(app, client, db, subscriptions) -> None:
    c = code()
    sid = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{c}&status=final")
    obs = await create(client, observation(c))
    await wait_notified(db, sid, 1)
    res = await client.put(f"/Observation/{obs['id']}", json={**obs, "status": "amended"}, headers=FHIR_JSON)
    assert res.status_code == 200
    await settle(app)
    assert len(await notified(db, sid)) == 1


async def test_changes_in_a_transaction_bundle_are_each_notified(client, db, subscriptions) -> None:
    c = code()
    sid = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{c}")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": observation(c), "request": {"method": "POST", "url": "Observation"}} for _ in range(3)],
    }
    res = await client.post("/", json=bundle, headers=FHIR_JSON)
    assert res.status_code == 200, res.text
    rows = await wait_notified(db, sid, 3)
    assert [r["event_number"] for r in rows] == [1, 2, 3]


async def test_a_delete_is_notified_to_criteria_without_parameters(app, client, db, subscriptions) -> None:
    kind = "Flag"  # a type no other test writes with a subscription on it
    sid = await _subscribe(client, subscriptions, kind)
    flag = await create(
        client, {"resourceType": kind, "status": "active", "code": {"text": "x"}, "subject": {"reference": "Patient/x"}}
    )
    assert (await client.delete(f"/{kind}/{flag['id']}")).status_code in (200, 204)
    rows = await wait_notified(db, sid, 2)
    mine = [(r["resource_id"], r["interaction"]) for r in rows if r["resource_id"] == flag["id"]]
    assert mine == [(flag["id"], "create"), (flag["id"], "delete")]


async def test_a_delete_is_not_notified_to_criteria_with_parameters(app, client, db, subscriptions) -> None:
    c = code()
    sid = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{c}")
    obs = await create(client, observation(c))
    await wait_notified(db, sid, 1)
    assert (await client.delete(f"/Observation/{obs['id']}")).status_code in (200, 204)
    await settle(app)
    assert [r["interaction"] for r in await notified(db, sid)] == ["create"]


async def test_events_committed_before_a_subscription_are_not_its(app, client, db, subscriptions) -> None:
    c = code()
    await create(client, observation(c))
    sid = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{c}")
    await settle(app)
    assert await notified(db, sid) == []


async def test_a_late_commit_is_not_skipped(app, client, db, subscriptions) -> None:
    """A transaction that started first and commits last is still notified: the relay
    reads below the write watermark."""
    c = code()
    sid = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{c}")
    store = app.state.store
    from headless_ehr.auth.principal import SYSTEM

    async with store.transaction() as slow:
        await slow.create(SYSTEM, observation(c))
        await create(client, observation(c))  # commits while the first is open
        await asyncio.sleep(0.2)  # the relay runs meanwhile; it must not pass the open one
    rows = await wait_notified(db, sid, 2)
    assert [r["event_number"] for r in rows] == [1, 2]
    assert len({r["resource_id"] for r in rows}) == 2


async def test_two_relays_never_number_an_event_twice(app, client, db, subscriptions) -> None:
    c = code()
    sid = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{c}")
    other = Relay(app.state.events_pool, app.state.store, app.state.policies)
    writes = [create(client, observation(c)) for _ in range(20)]

    async def spin() -> None:
        for _ in range(50):
            await other.relay_once()
            await asyncio.sleep(0)

    await asyncio.gather(spin(), *writes)
    rows = await wait_notified(db, sid, 20)
    assert [r["event_number"] for r in rows] == list(range(1, 21))
    assert len({r["event_seq"] for r in rows}) == 20


async def test_notifications_are_announced_on_ehr_events(app, client, db, subscriptions) -> None:
    c = code()
    sid = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{c}", kind="websocket")
    heard: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(app.state.settings.database_url)
    try:
        await conn.add_listener("ehr_events", lambda *args: heard.put_nowait(args[3]))
        obs = await create(client, observation(c))
        import orjson

        while True:
            message = orjson.loads(await asyncio.wait_for(heard.get(), 10))
            mine = [n for n in message["notifications"] if n["subscription"] == sid]
            if mine:
                break
    finally:
        await conn.close()
    assert mine[0]["first"] == 1 and mine[0]["channel"] == "websocket"
    assert mine[0]["events"][0]["id"] == obs["id"]
    assert mine[0]["events"][0]["eventNumber"] == 1


class _Crashing(Relay):
    """A relay that fails after matching, before its transaction commits."""

    async def _match(self, subscriptions, events):  # type: ignore[no-untyped-def]
        await super()._match(subscriptions, events)
        raise RuntimeError("crash between matching and commit")


async def test_a_relay_failing_mid_batch_numbers_nothing_and_the_next_numbers_once(app, client, db, subscriptions):
    c = code()
    sid = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{c}")
    crashing = _Crashing(app.state.events_pool, app.state.store, app.state.policies)
    await app.state.relay.close()  # this node's relay stands still: the crashing one gets the batch
    try:
        obs = await create(client, observation(c))
        with pytest.raises(RuntimeError):
            for _ in range(500):  # until the event is settled and the crashing relay reaches it
                await crashing.relay_once()
                await asyncio.sleep(0.01)
        assert await notified(db, sid) == []
    finally:
        await app.state.relay.start()
    rows = await wait_notified(db, sid, 1)
    assert [(r["event_number"], r["resource_id"]) for r in rows] == [(1, obs["id"])]


async def test_subscriptions_sharing_an_owner_and_criteria_are_each_notified(client, db, subscriptions) -> None:
    c = code()
    first = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{c}")
    second = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{c}")
    obs = await create(client, observation(c))
    for sid in (first, second):
        rows = await wait_notified(db, sid, 1)
        assert [(r["event_number"], r["resource_id"]) for r in rows] == [(1, obs["id"])]


async def test_a_state_row_from_before_its_start_position_existed_does_not_stop_the_relay(
    app, client, db, subscriptions
) -> None:
    """since_at defaults to '-infinity', which asyncpg reads as a naive datetime; such a row
    once made every round fail, so no subscription was notified any more."""
    c = code()
    sid = await _subscribe(client, subscriptions, f"Observation?code=urn:test:events|{c}")
    await db.execute("UPDATE subscription_state SET since_at = DEFAULT, since_seq = DEFAULT WHERE id = $1", sid)
    await db.execute("UPDATE subscription_generation SET generation = generation + 1")  # reload the cache
    obs = await create(client, observation(c))
    rows = await wait_notified(db, sid, 1)
    assert [r["resource_id"] for r in rows] == [obs["id"]]
