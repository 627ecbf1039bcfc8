"""A Subscription's status over its life: requested, active, error, off, end; its state follows its resource."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson

from headless_ehr.events.lifecycle import activate, end_expired, fail

from .conftest import (
    FHIR_JSON,
    code,
    create,
    notified,
    observation,
    settle,
    subscription,
    topic,
    topic_subscription,
    wait_notified,
)


async def _put(client, resource: dict) -> dict:
    res = await client.put(f"/Subscription/{resource['id']}", json=resource, headers=FHIR_JSON)
    assert res.status_code == 200, res.text
    return res.json()


async def _state(db, sid: str):
    return await db.fetchrow("SELECT * FROM subscription_state WHERE id = $1", sid)


async def test_an_off_subscription_is_not_notified(app, client, db, subscriptions) -> None:
    c = code()
    made = await create(client, subscription(f"Observation?code=urn:test:events|{c}"))
    subscriptions.append(made["id"])
    await _put(client, {**made, "status": "off"})
    await create(client, observation(c))
    await settle(app)
    assert await notified(db, made["id"]) == []


async def test_back_from_off_only_later_events_are_notified(app, client, db, subscriptions) -> None:
    c = code()
    made = await create(client, subscription(f"Observation?code=urn:test:events|{c}"))
    subscriptions.append(made["id"])
    await create(client, observation(c))
    await wait_notified(db, made["id"], 1)
    off = await _put(client, {**made, "status": "off"})
    await create(client, observation(c))  # while off
    on = await _put(client, {**off, "status": "requested"})
    assert on["status"] == "active"
    later = await create(client, observation(c))
    rows = await wait_notified(db, made["id"], 2)
    await settle(app)
    rows = await notified(db, made["id"])
    assert [r["event_number"] for r in rows] == [1, 2]
    assert rows[1]["resource_id"] == later["id"]


async def test_fail_sets_error_and_requested_resumes_where_delivery_stopped(app, client, db, subscriptions):
    c = code()
    made = await create(client, subscription(f"Observation?code=urn:test:events|{c}"))
    sid = made["id"]
    subscriptions.append(sid)
    for _ in range(3):
        await create(client, observation(c))
    await wait_notified(db, sid, 3)
    # the delivery worker delivered one, then kept failing
    await db.execute(
        "UPDATE subscription_state SET delivered_through = 1, attempts = 12, failing_since = now(),"
        " next_attempt_at = now() + interval '1 hour' WHERE id = $1",
        sid,
    )
    assert await fail(app.state.store, sid, "endpoint refused the connection")
    failed = (await client.get(f"/Subscription/{sid}")).json()
    assert failed["status"] == "error" and failed["error"] == "endpoint refused the connection"
    state = await _state(db, sid)
    assert state["status"] == "error" and state["error"] == "endpoint refused the connection"

    resumed = await _put(client, {**failed, "status": "requested"})
    assert resumed["status"] == "active" and "error" not in resumed
    state = await _state(db, sid)
    assert (state["status"], state["error"], state["attempts"], state["failing_since"]) == ("active", None, 0, None)
    assert state["delivered_through"] == 1 and state["events_since_start"] == 3
    assert state["next_attempt_at"] <= datetime.now(UTC)


async def test_errors_are_kept_in_notifications_while_in_error(app, client, db, subscriptions) -> None:
    c = code()
    sid = (await create(client, subscription(f"Observation?code=urn:test:events|{c}")))["id"]
    subscriptions.append(sid)
    await fail(app.state.store, sid, "gone")
    await create(client, observation(c))
    rows = await wait_notified(db, sid, 1)
    assert len(rows) == 1  # queued: a resume delivers it


async def test_the_server_changing_status_keeps_the_owner(app, client, client_for, db, subscriptions) -> None:
    url = f"urn:test:topic:{code()}"
    await create(client, topic(url))
    writer = await client_for("user/Subscription.cruds user/Observation.rs", subject="owner-1")
    made = await create(writer, topic_subscription(url))
    subscriptions.append(made["id"])
    assert made["status"] == "requested"  # a backport rest-hook waits for its handshake
    assert await activate(app.state.store, made["id"])
    current = (await client.get(f"/Subscription/{made['id']}")).json()
    assert current["status"] == "active" and current["meta"]["versionId"] == "2"
    owner = orjson.loads((await _state(db, made["id"]))["owner"])
    assert owner["sub"] == "owner-1"
    assert (await _state(db, made["id"]))["status"] == "active"


async def test_activate_does_not_override_off(app, client, subscriptions) -> None:
    made = await create(client, subscription("Observation?status=final"))
    subscriptions.append(made["id"])
    await _put(client, {**made, "status": "off"})
    assert not await activate(app.state.store, made["id"])
    assert (await client.get(f"/Subscription/{made['id']}")).json()["status"] == "off"


async def test_activate_of_a_deleted_subscription_answers_false(app, client) -> None:
    made = await create(client, subscription("Observation?status=final"))
    await client.delete(f"/Subscription/{made['id']}")
    assert not await activate(app.state.store, made["id"])


async def test_after_end_nothing_is_notified_and_the_server_sets_off(app, client, db, subscriptions) -> None:
    c = code()
    end = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    made = await create(client, subscription(f"Observation?code=urn:test:events|{c}", end=end))
    subscriptions.append(made["id"])
    assert made["status"] == "active"
    await asyncio.sleep(1.1)
    await create(client, observation(c))
    await settle(app)
    assert await notified(db, made["id"]) == []
    await end_expired(app.state.store, app.state.events_pool)
    assert (await client.get(f"/Subscription/{made['id']}")).json()["status"] == "off"
    assert (await _state(db, made["id"]))["status"] == "off"


async def test_deleting_a_subscription_removes_its_state_and_notifications(app, client, db) -> None:
    c = code()
    sid = (await create(client, subscription(f"Observation?code=urn:test:events|{c}")))["id"]
    await create(client, observation(c))
    await wait_notified(db, sid, 1)
    assert (await client.delete(f"/Subscription/{sid}")).status_code in (200, 204)
    assert await _state(db, sid) is None
    assert await notified(db, sid) == []


async def test_changing_the_criteria_changes_what_is_matched(app, client, db, subscriptions) -> None:
    first, second = code(), code()
    made = await create(client, subscription(f"Observation?code=urn:test:events|{first}"))
    subscriptions.append(made["id"])
    await _put(client, {**made, "criteria": f"Observation?code=urn:test:events|{second}"})
    await create(client, observation(first))
    hit = await create(client, observation(second))
    await wait_notified(db, made["id"], 1)
    await settle(app)
    assert [r["resource_id"] for r in await notified(db, made["id"])] == [hit["id"]]


async def test_a_patch_of_a_subscription_updates_its_state(client, db, subscriptions) -> None:
    made = await create(client, subscription("Observation?status=final"))
    subscriptions.append(made["id"])
    patch = [{"op": "replace", "path": "/status", "value": "off"}]
    res = await client.patch(
        f"/Subscription/{made['id']}", json=patch, headers={"Content-Type": "application/json-patch+json"}
    )
    assert res.status_code == 200, res.text
    assert (await _state(db, made["id"]))["status"] == "off"


async def test_a_subscription_without_state_gets_it_when_written_again_unchanged(client, db, subscriptions) -> None:
    """One stored before the relay existed: a PUT of the same content gives it its state."""
    made = await create(client, subscription("Observation?status=final"))
    subscriptions.append(made["id"])
    await db.execute("DELETE FROM subscription_state WHERE id = $1", made["id"])
    again = await _put(client, made)
    assert again["meta"]["versionId"] == made["meta"]["versionId"]  # no new version
    assert (await _state(db, made["id"]))["status"] == "active"
