# ruff: noqa: F811 (the live-server fixture is imported, and named as a parameter)
"""The WebSocket channel, R4 protocol (subscription.html#websockets): `bind <id>` answered
`bound <id>`, then `ping <id>` per notification the socket's token may read."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from headless_ehr.events import websocket
from headless_ehr.events.websocket import MAX_BINDINGS
from tests.auth.world import observation
from tests.events.websocket_support import (  # noqa: F401 (fixture)
    LiveServer,
    create_subscription,
    live,
    notify,
    post,
    receive,
    silent,
)


async def test_bind_is_answered_bound_and_each_notification_pinged_in_order(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db)
        patient = await post(client, {"resourceType": "Patient"})
    async with live.socket(live.token()) as socket:
        await socket.send(f"bind {sid}")
        assert await receive(socket) == f"bound {sid}"
        for _ in range(3):
            await notify(db, sid, "Patient", patient)
        assert [await receive(socket) for _ in range(3)] == [f"ping {sid}"] * 3
        assert await silent(socket)


async def test_notifications_before_the_bind_are_not_pinged(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db)
        patient = await post(client, {"resourceType": "Patient"})
    await notify(db, sid, "Patient", patient)
    async with live.socket(live.token()) as socket:
        await socket.send(f"bind {sid}")
        assert await receive(socket) == f"bound {sid}"
        assert await silent(socket)
        await notify(db, sid, "Patient", patient)
        assert await receive(socket) == f"ping {sid}"


async def test_the_second_path_speaks_the_same_protocol(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db)
    async with live.socket(live.token(), path="/ws/subscriptions") as socket:
        await socket.send(f"bind {sid}")
        assert await receive(socket) == f"bound {sid}"


async def test_an_upgrade_with_a_bad_token_is_refused_with_401(live: LiveServer):
    with pytest.raises(InvalidStatus) as refused:
        async with live.socket("not-a-token"):
            pass
    assert refused.value.response.status_code == 401
    assert b"OperationOutcome" in refused.value.response.body


async def test_a_token_for_another_server_is_refused(live: LiveServer):
    other = live.app.state.tokens.issue(
        issuer="http://elsewhere", audience="http://elsewhere/fhir", subject="x", client_id="x", scope="system/*.*"
    ).access_token
    with pytest.raises(InvalidStatus) as refused:
        async with live.socket(other):
            pass
    assert refused.value.response.status_code == 401


async def test_bind_without_a_token_is_an_error_not_a_binding(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db)
    async with live.socket(None) as socket:
        await socket.send(f"bind {sid}")
        assert (await receive(socket)).startswith(f"error {sid} ")


async def test_bind_to_an_unknown_subscription_is_an_error(live: LiveServer):
    async with live.socket(live.token()) as socket:
        await socket.send("bind no-such-subscription")
        assert (await receive(socket)).startswith("error no-such-subscription ")


async def test_bind_to_a_rest_hook_subscription_is_an_error(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, channel="rest-hook")
    async with live.socket(live.token()) as socket:
        await socket.send(f"bind {sid}")
        reply = await receive(socket)
        assert reply.startswith(f"error {sid} ") and "websocket" in reply


async def test_a_token_without_read_rights_on_subscriptions_cannot_bind(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db)
    async with live.socket(live.token("system/Patient.rs")) as socket:
        await socket.send(f"bind {sid}")
        assert (await receive(socket)).startswith(f"error {sid} ")


async def test_an_unknown_command_is_answered_with_an_error(live: LiveServer):
    async with live.socket(live.token()) as socket:
        await socket.send("subscribe everything")
        assert (await receive(socket)).startswith("error unknown command")


async def test_a_ping_is_sent_only_for_resources_the_sockets_token_may_read(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db)
        patient = await post(client, {"resourceType": "Patient"})
        practitioner = await post(client, {"resourceType": "Practitioner"})
    async with live.socket(live.token("system/Patient.rs system/Subscription.rs")) as socket:
        await socket.send(f"bind {sid}")
        assert await receive(socket) == f"bound {sid}"
        await notify(db, sid, "Practitioner", practitioner)
        await notify(db, sid, "Patient", patient)
        assert await receive(socket) == f"ping {sid}"  # the Patient's; none for the Practitioner
        assert await silent(socket)


async def test_a_patient_token_gets_no_ping_for_another_patients_resource(live: LiveServer, db):
    async with live.client() as client:
        mine = await post(client, {"resourceType": "Patient"})
        theirs = await post(client, {"resourceType": "Patient"})
        their_obs = await post(client, observation(theirs, "laboratory", "x"))
        my_obs = await post(client, observation(mine, "laboratory", "x"))
    async with live.client(live.token("patient/*.cruds", patient=mine)) as client:
        sid = await create_subscription(client, db)
    async with live.socket(live.token("patient/*.rs", patient=mine)) as socket:
        await socket.send(f"bind {sid}")
        assert await receive(socket) == f"bound {sid}"
        await notify(db, sid, "Observation", their_obs)
        await notify(db, sid, "Observation", my_obs)
        assert await receive(socket) == f"ping {sid}"
        assert await silent(socket)


async def test_a_patient_token_cannot_bind_another_patients_subscription(live: LiveServer, db):
    async with live.client() as client:
        mine = await post(client, {"resourceType": "Patient"})
        theirs = await post(client, {"resourceType": "Patient"})
    async with live.client(live.token("patient/*.cruds", patient=theirs)) as client:
        sid = await create_subscription(client, db)
    async with live.socket(live.token("patient/*.rs", patient=mine)) as socket:
        await socket.send(f"bind {sid}")
        assert (await receive(socket)).startswith(f"error {sid} ")


async def test_a_patient_token_cannot_bind_a_system_owned_subscription(live: LiveServer, db):
    async with live.client() as client:
        mine = await post(client, {"resourceType": "Patient"})
        sid = await create_subscription(client, db)
    async with live.socket(live.token("patient/*.rs", patient=mine)) as socket:
        await socket.send(f"bind {sid}")
        assert (await receive(socket)).startswith(f"error {sid} ")


async def test_a_slow_socket_does_not_hold_back_another(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db)
        patient = await post(client, {"resourceType": "Patient"})
    async with live.socket(live.token()) as stalled, live.socket(live.token()) as reading:
        for socket in (stalled, reading):
            await socket.send(f"bind {sid}")
            assert await receive(socket) == f"bound {sid}"
        for _ in range(20):
            await notify(db, sid, "Patient", patient)
        # `stalled` reads nothing; the other gets all twenty
        assert [await receive(reading) for _ in range(20)] == [f"ping {sid}"] * 20


async def test_a_message_over_the_size_bound_closes_the_socket(live: LiveServer):
    async with live.socket(live.token()) as socket:
        await socket.send("bind " + "x" * 40_000)
        with pytest.raises(ConnectionClosed) as closed:
            await receive(socket)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_the_socket_closes_when_its_token_expires(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db)
    async with live.socket(live.token(lifetime=2)) as socket:
        await socket.send(f"bind {sid}")
        assert await receive(socket) == f"bound {sid}"
        with pytest.raises(ConnectionClosed) as closed:
            await receive(socket, within=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_the_socket_closes_when_its_token_is_revoked(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db)
    token = live.token()
    principal = live.app.state.tokens.verify(token, live.base)
    async with live.socket(token) as socket:
        await socket.send(f"bind {sid}")
        assert await receive(socket) == f"bound {sid}"
        await live.app.state.tokens.revoke(principal.token_id, principal.expires_at)
        await notify(db, sid, "Patient", "anything")
        with pytest.raises(ConnectionClosed) as closed:
            await receive(socket)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_a_deleted_subscription_unbinds_its_sockets(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db)
        patient = await post(client, {"resourceType": "Patient"})
        resource = (await client.get(f"/Subscription/{sid}")).json()
        async with live.socket(live.token()) as socket:
            await socket.send(f"bind {sid}")
            assert await receive(socket) == f"bound {sid}"
            assert (await client.delete(f"/Subscription/{sid}")).status_code in (200, 204)
            await db.execute("DELETE FROM subscription_state WHERE id = $1", sid)  # as the relay's hook does
            await db.execute("SELECT pg_notify('ehr_events', '')")
            await asyncio.sleep(0.5)  # the node's next round finds it gone
            # the same id made again: a new subscription, which the old binding does not follow
            del resource["meta"]
            assert (await client.put(f"/Subscription/{sid}", json=resource)).status_code == 201
            await db.execute(
                "INSERT INTO subscription_state (id, owner, status, triggers, channel, payload, r4_style)"
                " VALUES ($1, '{}', 'active', '[]', 'websocket', 'empty', true) ON CONFLICT (id) DO NOTHING",
                sid,
            )
            await notify(db, sid, "Patient", patient)
            assert await silent(socket)


async def test_a_committed_matching_write_is_pinged_and_a_non_matching_one_is_not(live: LiveServer):
    family = uuid.uuid4().hex
    subscription = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "end to end",
        "criteria": f"Patient?family={family}",
        "channel": {"type": "websocket"},
    }
    async with live.client() as client:
        sid = await post(client, subscription)
        async with live.socket(live.token()) as socket:
            await socket.send(f"bind {sid}")
            assert await receive(socket) == f"bound {sid}"
            await post(client, {"resourceType": "Patient", "name": [{"family": "someone-else"}]})
            await post(client, {"resourceType": "Patient", "name": [{"family": family}]})
            assert await receive(socket) == f"ping {sid}"
            assert await silent(socket)


async def test_a_socket_binds_at_most_the_bounded_number_of_subscriptions(live: LiveServer, db):
    async with live.client() as client:
        ids = [await create_subscription(client, db) for _ in range(MAX_BINDINGS + 1)]
    async with live.socket(live.token()) as socket:
        for sid in ids[:-1]:
            await socket.send(f"bind {sid}")
            assert await receive(socket) == f"bound {sid}"
        await socket.send(f"bind {ids[-1]}")
        assert (await receive(socket)).startswith(f"error {ids[-1]} ")


async def test_a_socket_with_nothing_bound_is_closed_when_idle(live: LiveServer, monkeypatch):
    monkeypatch.setattr(websocket, "IDLE_SECONDS", 0.5)
    async with live.socket(live.token()) as socket:
        with pytest.raises(ConnectionClosed) as closed:
            await receive(socket, within=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


async def test_connections_beyond_the_nodes_bound_are_told_to_try_again_later(live: LiveServer, monkeypatch):
    monkeypatch.setattr(live.app.state.websockets, "max_connections", 1)
    async with live.socket(live.token()) as first, live.socket(live.token()) as second:
        with pytest.raises(ConnectionClosed) as closed:
            await receive(second)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        await first.send("bind no-such-subscription")
        assert (await receive(first)).startswith("error ")


async def test_the_fan_out_reconnects_after_losing_its_database_connection(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db)
        patient = await post(client, {"resourceType": "Patient"})
    hub = live.app.state.websockets.hub
    async with live.socket(live.token()) as socket:
        await socket.send(f"bind {sid}")
        assert await receive(socket) == f"bound {sid}"
        assert hub.connection is not None
        await db.execute("SELECT pg_terminate_backend($1)", hub.connection.get_server_pid())
        await notify(db, sid, "Patient", patient)  # maybe while it is away: caught up on reconnection
        assert await receive(socket, within=10) == f"ping {sid}"
        await asyncio.wait_for(hub.connected.wait(), 10)
        await notify(db, sid, "Patient", patient)
        assert await receive(socket) == f"ping {sid}"
