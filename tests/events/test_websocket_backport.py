# ruff: noqa: F811 (the live-server fixture is imported, and named as a parameter)
"""The WebSocket channel, Subscriptions Backport IG protocol: `$get-ws-binding-token`, then
`bind-with-token <token>` → a handshake Bundle, event-notification Bundles as the
subscription's payload asks, heartbeat Bundles; the token carries its asker's rights."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from headless_ehr.events.binding_tokens import BindingTokens
from tests.auth.world import observation
from tests.events.conftest import add_notifications, notification_status
from tests.events.websocket_support import (  # noqa: F401 (fixture)
    LiveServer,
    create_subscription,
    live,
    notify,
    post,
    receive,
    silent,
)

TOPIC = "http://example.org/topics/anything"


async def binding_token(live: LiveServer, sid: str, token: str | None = None) -> dict[str, Any]:
    async with live.client(token) as client:
        answer = await client.post(f"/Subscription/{sid}/$get-ws-binding-token")
    assert answer.status_code == 200, answer.text
    return {
        p["name"]: p.get("valueString") or p.get("valueUrl") or p.get("valueDateTime")
        for p in answer.json()["parameter"]
    }


async def bind_answer(live: LiveServer, token: str) -> dict[str, Any]:
    """The first answer to `bind-with-token <token>` on a socket of its own (without an access token)."""
    async with live.socket(None) as socket:
        await socket.send(f"bind-with-token {token}")
        return json.loads(await receive(socket))


async def test_the_binding_token_operation_names_the_subscription_and_the_socket_url(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
    answer = await binding_token(live, sid)
    assert answer["token"] and answer["expiration"]
    assert answer["subscription"] == f"{live.base}/Subscription/{sid}"
    assert answer["websocket-url"] == live.ws_url


async def test_bind_with_token_is_answered_with_a_handshake_bundle(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
    token = (await binding_token(live, sid))["token"]
    async with live.socket(None) as socket:  # a browser: no Authorization header
        await socket.send(f"bind-with-token {token}")
        status = notification_status(json.loads(await receive(socket)))
    assert status["type"] == "handshake"
    assert status["subscription"] == {"reference": f"{live.base}/Subscription/{sid}"}
    assert status["topic"] == TOPIC and status["status"] == "active"


async def test_each_event_comes_as_a_notification_bundle_numbered_in_order(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC, payload="id-only")
        patient = await post(client, {"resourceType": "Patient"})
    token = (await binding_token(live, sid))["token"]
    async with live.socket(None) as socket:
        await socket.send(f"bind-with-token {token}")
        await receive(socket)  # the handshake
        first, second = (
            await notify(db, sid, "Patient", patient),
            await notify(db, sid, "Patient", patient, 2, "update"),
        )
        bundles = [json.loads(await receive(socket)) for _ in range(2)]
    statuses = [notification_status(b) for b in bundles]
    assert [s["type"] for s in statuses] == ["event-notification"] * 2
    assert [s["events"][0]["event-number"] for s in statuses] == [str(first), str(second)]
    assert statuses[0]["events"][0]["focus"] == {"reference": f"{live.base}/Patient/{patient}"}
    assert [b["entry"][1]["request"]["method"] for b in bundles] == ["POST", "PUT"]
    assert "resource" not in bundles[0]["entry"][1]  # id-only


async def test_each_notification_bundle_counts_the_events_up_to_its_own(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC, payload="id-only")
        patient = await post(client, {"resourceType": "Patient"})
    token = (await binding_token(live, sid))["token"]
    async with live.socket(None) as socket:
        await socket.send(f"bind-with-token {token}")
        await receive(socket)  # the handshake
        event = (uuid.uuid4(), 0, "Patient", patient, 1, "create", datetime.now(UTC))
        numbers = await add_notifications(db, sid, [event, (uuid.uuid4(), *event[1:])])  # one commit
        statuses = [notification_status(json.loads(await receive(socket))) for _ in numbers]
    # as in a webhook's Bundle: eventsSinceSubscriptionStart includes this notification, not later ones
    assert [s["events-since-subscription-start"] for s in statuses] == [str(n) for n in numbers]


async def test_a_full_resource_payload_carries_the_events_own_version(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC, payload="full-resource")
        patient = await post(client, {"resourceType": "Patient", "gender": "female"})
        changed = await client.put(
            f"/Patient/{patient}", json={"resourceType": "Patient", "id": patient, "gender": "male"}
        )
        assert changed.status_code == 200
    token = (await binding_token(live, sid))["token"]
    async with live.socket(None) as socket:
        await socket.send(f"bind-with-token {token}")
        await receive(socket)
        await notify(db, sid, "Patient", patient, 1)
        bundle = json.loads(await receive(socket))
    resource = bundle["entry"][1]["resource"]
    assert resource["gender"] == "female" and resource["meta"]["versionId"] == "1"


async def test_a_binding_token_carries_its_askers_rights(live: LiveServer, db):
    async with live.client() as client:
        mine = await post(client, {"resourceType": "Patient"})
        theirs = await post(client, {"resourceType": "Patient"})
        their_obs = await post(client, observation(theirs, "laboratory", "x"))
        my_obs = await post(client, observation(mine, "laboratory", "x"))
    async with live.client(live.token("patient/*.cruds", patient=mine)) as client:
        sid = await create_subscription(client, db, topic=TOPIC, payload="id-only")
    token = (await binding_token(live, sid, live.token("patient/*.rs", patient=mine)))["token"]
    async with live.socket(None) as socket:
        await socket.send(f"bind-with-token {token}")
        await receive(socket)
        await notify(db, sid, "Observation", their_obs)
        await notify(db, sid, "Observation", my_obs)
        status = notification_status(json.loads(await receive(socket)))
        assert status["events"][0]["focus"] == {"reference": f"{live.base}/Observation/{my_obs}"}
        assert await silent(socket)


async def test_a_heartbeat_bundle_comes_after_the_heartbeat_period_without_events(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC, heartbeat=1)
    token = (await binding_token(live, sid))["token"]
    async with live.socket(None) as socket:
        await socket.send(f"bind-with-token {token}")
        await receive(socket)
        assert notification_status(json.loads(await receive(socket, within=3)))["type"] == "heartbeat"


async def test_an_expired_binding_token_is_refused(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
    state = live.app.state
    past = BindingTokens(state.signing_keys, state.tokens, state.policies, state.pool, lifetime=-60)
    token, _ = past.issue(state.tokens.verify(live.token(), live.base), [sid], live.base)
    outcome = await bind_answer(live, token)
    assert outcome["resourceType"] == "OperationOutcome" and "expired" in outcome["issue"][0]["diagnostics"]


async def test_an_access_token_is_not_a_binding_token(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
    async with live.socket(None) as socket:
        await socket.send(f"bind-with-token {live.token()}")
        outcome = json.loads(await receive(socket))
        assert outcome["resourceType"] == "OperationOutcome"
        await socket.send(f"bind {sid}")  # and the socket has no rights of its own
        assert (await receive(socket)).startswith(f"error {sid} ")


async def test_a_binding_token_is_not_an_access_token(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
    token = (await binding_token(live, sid))["token"]
    async with live.client(token) as client:
        assert (await client.get("/Patient")).status_code == 401


async def test_a_binding_token_of_a_revoked_access_token_is_refused(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
    asking = live.token()
    token = (await binding_token(live, sid, asking))["token"]
    principal = live.app.state.tokens.verify(asking, live.base)
    await live.app.state.tokens.revoke(principal.token_id, principal.expires_at)
    outcome = await bind_answer(live, token)
    assert outcome["resourceType"] == "OperationOutcome" and "revoked" in outcome["issue"][0]["diagnostics"]


async def test_a_tampered_binding_token_is_refused(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
    token = (await binding_token(live, sid))["token"]
    head, claims, signature = token.split(".")
    assert (await bind_answer(live, f"{head}.{claims}.{signature[::-1]}"))["resourceType"] == "OperationOutcome"


async def test_a_binding_token_socket_ends_with_its_askers_token(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
    token = (await binding_token(live, sid, live.token(lifetime=3)))["token"]
    async with live.socket(None) as socket:
        await socket.send(f"bind-with-token {token}")
        await receive(socket)
        with pytest.raises(ConnectionClosed) as closed:
            await receive(socket, within=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_no_binding_token_for_a_rest_hook_subscription(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, channel="rest-hook")
        answer = await client.post(f"/Subscription/{sid}/$get-ws-binding-token")
    assert answer.status_code == 422 and answer.json()["resourceType"] == "OperationOutcome"


async def test_no_binding_token_for_another_patients_subscription(live: LiveServer, db):
    async with live.client() as client:
        mine = await post(client, {"resourceType": "Patient"})
        theirs = await post(client, {"resourceType": "Patient"})
    async with live.client(live.token("patient/*.cruds", patient=theirs)) as client:
        sid = await create_subscription(client, db, topic=TOPIC)
    async with live.client(live.token("patient/*.rs", patient=mine)) as client:
        answer = await client.post(f"/Subscription/{sid}/$get-ws-binding-token")
    assert answer.status_code == 404


async def test_the_type_level_binding_token_needs_ids(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
        missing = await client.post("/Subscription/$get-ws-binding-token")
        named = await client.post(f"/Subscription/$get-ws-binding-token?id={sid}")
    assert missing.status_code == 400
    assert named.status_code == 200


async def test_the_binding_token_operation_is_not_a_get(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
        answer = await client.get(f"/Subscription/{sid}/$get-ws-binding-token")
    assert answer.status_code == 405


async def test_no_heartbeat_once_the_subscription_is_off(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC, heartbeat=1)
    token = (await binding_token(live, sid))["token"]
    async with live.socket(None) as socket:
        await socket.send(f"bind-with-token {token}")
        await receive(socket)
        await db.execute("UPDATE subscription_state SET status = 'off' WHERE id = $1", sid)
        await db.execute("SELECT pg_notify('ehr_events', '')")
        with contextlib.suppress(TimeoutError):
            await receive(socket, within=1.5)  # a heartbeat due before the node saw it off, if any
        assert await silent(socket, 2.5)


async def test_a_binding_token_binds_once(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
    token = (await binding_token(live, sid))["token"]
    async with live.socket(None) as first, live.socket(None) as second:
        await first.send(f"bind-with-token {token}")
        assert notification_status(json.loads(await receive(first)))["type"] == "handshake"
        await second.send(f"bind-with-token {token}")
        outcome = json.loads(await receive(second))
    assert outcome["resourceType"] == "OperationOutcome" and "used already" in outcome["issue"][0]["diagnostics"]
