"""Webhooks from real `ehr serve` processes to a real receiver on loopback: a node
SIGKILLed between commit and delivery loses nothing, and two nodes on one database
deliver each event once, in order."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
import uuid
from collections.abc import Iterator

import httpx
from standardwebhooks import Webhook

from tests.e2e.test_serve import Server, _env
from tests.events.webhook_receiver import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_EXTENSION = "https://headless-ehr.dev/fhir/StructureDefinition/subscription-secret"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _node_env(database_url: str) -> dict[str, str]:
    """Every node of a test: one database, one admin client, quick retries, a short lease
    (3 x 1.5 x timeout + 5 s, events/delivery.py)."""
    return _env(
        EHR_DATABASE_URL=database_url,
        EHR_ADMIN_CLIENT_ID=f"e2e-admin-{uuid.uuid4().hex[:8]}",
        EHR_ADMIN_CLIENT_SECRET=secrets.token_urlsafe(24),
        EHR_WEBHOOK_RETRY_BASE_SECONDS="0.1",
        EHR_WEBHOOK_TIMEOUT_SECONDS="1",
        EHR_WEBHOOK_BLOCKED_NETWORKS="",  # the receiver is on loopback
    )


def _subscribe(server: Server, endpoint: str, family: str) -> str:
    subscription = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "e2e",
        "criteria": f"Patient?family={family}",
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"},
        "extension": [{"url": SECRET_EXTENSION, "valueString": SECRET}],
    }
    answer = httpx.post(f"{server.base}/Subscription", json=subscription, headers=server.headers(**FHIR_JSON))
    assert answer.status_code == 201, answer.text
    assert answer.json()["status"] == "active"
    return answer.json()["id"]


def _create(server: Server, family: str, k: int) -> str:
    patient = {"resourceType": "Patient", "name": [{"family": family, "given": [f"n{k}"]}]}
    answer = httpx.post(f"{server.base}/Patient", json=patient, headers=server.headers(**FHIR_JSON), timeout=30)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


async def _event_ids(database_url: str, ids: list[str]) -> list[str]:
    """The outbox event ids of these Patients' creations, in the order given."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, event_id FROM outbox WHERE resource_type = 'Patient' AND id = ANY($1::text[])", ids
        )
    finally:
        await conn.close()
    by_id = {r["id"]: str(r["event_id"]) for r in rows}
    return [by_id[i] for i in ids]


def _in_order_with_retries_only(received: list[str], expected: list[str]) -> None:
    """Each expected id arrives, in order; any repeat is a retry of the one before or a
    resend from a lost lease (an id already seen), never an unknown one."""
    assert set(received) == set(expected), (len(set(received)), len(expected))
    rank = {e: k for k, e in enumerate(expected)}
    firsts = list(dict.fromkeys(received))
    assert [rank[e] for e in firsts] == list(range(len(expected)))


async def test_a_node_killed_between_commit_and_delivery_loses_nothing_once_restarted(fresh_database: str):
    receiver = Receiver()
    receiver.delay = 0.05
    env = _node_env(fresh_database)
    server = Server(env)
    try:
        server.wait_ready()
        family = uuid.uuid4().hex
        _subscribe(server, receiver.url, family)
        made = [_create(server, family, k) for k in range(10)]
        await receiver.wait_for(2, seconds=30)  # delivery is under way
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
        server = Server(env)
        server.wait_ready()
        made_while_down = [_create(server, family, k) for k in range(10, 15)]
        expected = await _event_ids(fresh_database, made + made_while_down)
        await receiver.wait_for(len(expected), seconds=60)
        await _until_settled(receiver, len(expected))
        ok = receiver.received(ok_only=True)
        for r in ok:
            Webhook(SECRET).verify(r.body, r.headers)
        _in_order_with_retries_only([r.headers["webhook-id"] for r in ok], expected)
    finally:
        server.stop()
        receiver.stop()


async def _until_settled(receiver: Receiver, at_least: int, quiet: float = 1.0) -> None:
    """Until no request has come for `quiet` seconds."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = receiver.received()
        if len(got) >= at_least and time.monotonic() - got[-1].at > quiet:
            return
        await asyncio.sleep(0.1)


@contextlib.contextmanager
def _two_nodes(database_url: str) -> Iterator[tuple[Server, Server, Receiver]]:
    """Two `ehr serve` nodes on one database, and a receiver; each stopped after (if still running)."""
    receiver = Receiver()
    env = _node_env(database_url)
    nodes = [Server(env)]
    try:
        nodes[0].wait_ready()
        nodes.append(Server(env))
        nodes[1].wait_ready()
        yield nodes[0], nodes[1], receiver
    finally:
        for node in reversed(nodes):
            if node.proc.poll() is None:
                node.stop()
        receiver.stop()


async def test_two_nodes_deliver_every_event_once_in_order(fresh_database: str):
    with _two_nodes(fresh_database) as (first, second, receiver):
        family = uuid.uuid4().hex
        _subscribe(first, receiver.url, family)
        made = [_create(first if k % 2 else second, family, k) for k in range(40)]
        expected = await _event_ids(fresh_database, made)
        await receiver.wait_for(len(expected), seconds=60)
        await _until_settled(receiver, len(expected))
        ids = [r.headers["webhook-id"] for r in receiver.received()]
        assert ids == expected  # once each, in commit order, across both nodes


async def test_killing_one_of_two_nodes_mid_stream_loses_nothing(fresh_database: str):
    with _two_nodes(fresh_database) as (first, second, receiver):
        receiver.delay = 0.02
        family = uuid.uuid4().hex
        _subscribe(second, receiver.url, family)
        made = [_create(second, family, k) for k in range(20)]
        await receiver.wait_for(3, seconds=30)
        first.proc.send_signal(signal.SIGKILL)  # whichever was delivering, the other goes on
        first.proc.wait(timeout=10)
        made += [_create(second, family, k) for k in range(20, 30)]
        expected = await _event_ids(fresh_database, made)
        await receiver.wait_for(len(expected), seconds=60)
        await _until_settled(receiver, len(expected))
        _in_order_with_retries_only([r.headers["webhook-id"] for r in receiver.received(ok_only=True)], expected)
