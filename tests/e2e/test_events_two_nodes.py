"""Two `ehr serve` nodes on one PostgreSQL: a write on either reaches WebSocket clients
bound on both, each event once and in order, and killing a node mid-stream loses
nothing (the other node's relay takes the work over; its sockets keep receiving).

Authorisation is off here (loopback only): these tests are about the fan-out between
nodes; the channel's access rules are tested in tests/events/.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.e2e.test_serve import Server, _env
from tests.events.conftest import notification_status

FHIR_JSON = {"Content-Type": "application/fhir+json"}
PAYLOAD_CONTENT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content"


def start_nodes(database_url: str) -> tuple[Server, Server]:
    env = _env(EHR_DATABASE_URL=database_url, EHR_AUTH="off")
    first = Server(env)
    first.wait_ready()  # migrations applied once, before the second node starts
    second = Server(env)
    second.wait_ready()
    return first, second


async def subscribe(node: Server, family: str) -> str:
    """A websocket Subscription on Patients of that family, id-only payload, active."""
    subscription = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "two nodes",
        "criteria": f"Patient?family={family}",
        "channel": {
            "type": "websocket",
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": "id-only"}]},
        },
    }
    async with httpx.AsyncClient(base_url=node.base, timeout=30, trust_env=False) as client:
        created = await client.post("/Subscription", json=subscription, headers=FHIR_JSON)
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        for _ in range(100):
            if (await client.get(f"/Subscription/{sid}")).json()["status"] == "active":
                return sid
            await asyncio.sleep(0.1)
    raise AssertionError("the subscription did not become active")


async def bound_socket(node: Server, sid: str) -> ClientConnection:
    """A socket on node bound to the subscription with a binding token (notification Bundles)."""
    async with httpx.AsyncClient(base_url=node.base, timeout=30, trust_env=False) as client:
        answer = await client.post(f"/Subscription/{sid}/$get-ws-binding-token")
    assert answer.status_code == 200, answer.text
    values = {p["name"]: p.get("valueString") or p.get("valueUrl") for p in answer.json()["parameter"]}
    socket = await connect(values["websocket-url"], proxy=None, open_timeout=10)
    await socket.send(f"bind-with-token {values['token']}")
    handshake = json.loads(await asyncio.wait_for(socket.recv(), 10))
    assert notification_status(handshake)["type"] == "handshake"
    return socket


async def events_until(socket: ClientConnection, count: int, within: float = 60) -> list[tuple[int, str]]:
    """(event number, focus id) of each event-notification, until `count` have come (or time runs out)."""
    seen: list[tuple[int, str]] = []
    deadline = asyncio.get_running_loop().time() + within
    while len(seen) < count:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        try:
            status = notification_status(json.loads(await asyncio.wait_for(socket.recv(), left)))
        except TimeoutError:
            break
        if status["type"] == "event-notification":
            seen += [(int(e["event-number"]), e["focus"]["reference"].rsplit("/", 1)[-1]) for e in status["events"]]
    return seen


async def create_patients(node: Server, family: str, count: int) -> list[str]:
    async with httpx.AsyncClient(base_url=node.base, timeout=30, trust_env=False) as client:
        ids = []
        for _ in range(count):
            created = await client.post(
                "/Patient", json={"resourceType": "Patient", "name": [{"family": family}]}, headers=FHIR_JSON
            )
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
    return ids


async def committed(node: Server, family: str) -> set[str]:
    async with httpx.AsyncClient(base_url=node.base, timeout=30, trust_env=False) as client:
        page = await client.get("/Patient", params={"family": family, "_count": "1000", "_elements": "id"})
    assert page.status_code == 200
    return {e["resource"]["id"] for e in page.json().get("entry", [])}


async def test_a_write_on_one_node_reaches_sockets_on_both_once_each_in_order(fresh_database: str):
    first, second = start_nodes(fresh_database)
    try:
        family = uuid.uuid4().hex
        sid = await subscribe(first, family)
        on_first, on_second = await bound_socket(first, sid), await bound_socket(second, sid)
        written = await create_patients(first, family, 10) + await create_patients(second, family, 10)
        for socket in (on_first, on_second):
            seen = await events_until(socket, 20)
            assert [n for n, _ in seen] == list(range(1, 21))
            assert [rid for _, rid in seen] == written
            assert await events_until(socket, 1, within=1) == []
            await socket.close()
    finally:
        first.stop()
        second.stop()


async def test_killing_a_node_mid_stream_loses_nothing(fresh_database: str):
    first, second = start_nodes(fresh_database)
    try:
        family = uuid.uuid4().hex
        sid = await subscribe(first, family)
        socket = await bound_socket(second, sid)

        async def write_then_kill() -> None:
            await create_patients(first, family, 15)
            # a write in flight as the node dies: committed or not, the stream must agree
            in_flight = asyncio.create_task(create_patients(first, family, 1))
            await asyncio.sleep(0.005)
            first.proc.kill()
            first.proc.wait(timeout=30)
            await asyncio.gather(in_flight, return_exceptions=True)
            await create_patients(second, family, 15)

        await write_then_kill()  # the socket's notifications wait meanwhile (the server queues them)
        expected = await committed(second, family)
        seen = await events_until(socket, len(expected), within=30)
        assert [n for n, _ in seen] == list(range(1, len(expected) + 1))  # each once, in order, no gap
        assert {rid for _, rid in seen} == expected
        assert await events_until(socket, 1, within=2) == []  # and nothing more
        await socket.close()
    finally:
        first.stop()
        second.stop()
