"""Rest-hook delivery to a real receiver on loopback: order, once per id, retries, error, resume."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import orjson
from standardwebhooks import Webhook

from headless_ehr.events.delivery import DeliveryWorker, RetryPolicy
from headless_ehr.events.webhook import networks

from .delivery_support import (
    RETRY_BASE,
    SECRET,
    add_subscription,
    create,
    deliveries_of,
    delivery_app,
    eventually,
    fhir,
    notify,
    pool,
    r4_subscription,
    receiver,
    state_of,
    subscribe,
)
from .webhook_receiver import Receiver

__all__ = ["delivery_app", "fhir", "pool", "receiver"]  # fixtures, used by name


async def _patients(fhir: Any, n: int) -> list[tuple[str, str]]:
    return [("Patient", (await create(fhir, gender="female"))["id"]) for _ in range(n)]


async def test_every_notification_is_delivered_once_by_id_and_in_order_after_the_receiver_comes_back(
    fhir, pool, receiver: Receiver
):
    receiver.stop()  # the endpoint is down
    sid = await add_subscription(pool, receiver.url)
    sent = await notify(pool, sid, *await _patients(fhir, 5))
    await eventually(lambda: _attempted(pool, sid, 2))  # failed, backed off, failed again
    receiver.start()
    got = await receiver.wait_for(5)
    await asyncio.sleep(0.3)  # nothing more comes
    ids = [r.headers["webhook-id"] for r in receiver.received()]
    assert ids == [e["event_id"] for e in sent]
    assert (await state_of(pool, sid))["delivered_through"] == 5
    assert [orjson.loads(r.body)["entry"][1]["fullUrl"].rsplit("/", 1)[1] for r in got] == [e["id"] for e in sent]


async def _attempted(pool: Any, sid: str, count: int) -> bool:
    return len(await deliveries_of(pool, sid)) >= count


async def test_signatures_verify_with_the_standard_webhooks_reference_code(fhir, pool, receiver: Receiver):
    sid = await add_subscription(pool, receiver.url)
    await notify(pool, sid, *await _patients(fhir, 2))
    for got in await receiver.wait_for(2):
        bundle = Webhook(SECRET).verify(got.body, got.headers)
        assert bundle["resourceType"] == "Bundle"
        assert got.headers["webhook-signature"].startswith("v1,")
        assert got.headers["content-type"] == "application/fhir+json"


async def test_a_signature_made_with_another_secret_does_not_verify(fhir, pool, receiver: Receiver):
    sid = await add_subscription(pool, receiver.url)
    await notify(pool, sid, *await _patients(fhir, 1))
    (got,) = await receiver.wait_for(1)
    other = Webhook("whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=")
    try:
        other.verify(got.body, got.headers)
    except Exception as refused:
        assert "signature" in str(refused).lower()
    else:
        raise AssertionError("verified with the wrong secret")


async def test_without_a_secret_the_request_is_unsigned_but_carries_its_id(fhir, pool, receiver: Receiver):
    sid = await add_subscription(pool, receiver.url, secret=None)
    sent = await notify(pool, sid, *await _patients(fhir, 1))
    (got,) = await receiver.wait_for(1)
    assert "webhook-signature" not in got.headers
    assert got.headers["webhook-id"] == sent[0]["event_id"]
    assert got.headers["webhook-timestamp"].isdigit()


async def test_a_retry_carries_the_same_webhook_id(fhir, pool, receiver: Receiver):
    answers = iter([500, 503])
    receiver.answer = lambda _r: next(answers, 200)
    sid = await add_subscription(pool, receiver.url)
    sent = await notify(pool, sid, *await _patients(fhir, 1))
    await receiver.wait_for(3, ok_only=False)
    assert {r.headers["webhook-id"] for r in receiver.received()} == {sent[0]["event_id"]}
    await eventually(lambda: _delivered(pool, sid, 1))
    log = await deliveries_of(pool, sid)
    assert [(d["attempt"], d["http_status"]) for d in log] == [(1, 500), (2, 503), (3, 200)]


async def test_an_endpoint_in_a_blocked_network_puts_the_subscription_in_error_at_once(
    delivery_app, fhir, pool, receiver: Receiver
):
    """Retrying cannot make a blocked address allowed: no 24 hours of attempts, no request sent."""
    sender = delivery_app.state.delivery.sender
    allowed = sender._blocked
    sender._blocked = networks(["127.0.0.0/8"])  # as EHR_WEBHOOK_BLOCKED_NETWORKS=127.0.0.0/8 would
    try:
        family = uuid.uuid4().hex
        sid = await subscribe(fhir, r4_subscription(receiver.url, f"Patient?family={family}"))
        await create(fhir, name=[{"family": family}])
        state = await eventually(lambda: _in_status(pool, sid, "error"), seconds=10)
    finally:
        sender._blocked = allowed
    assert "EHR_WEBHOOK_BLOCKED_NETWORKS" in state["error"]
    assert (await fhir.get(f"/Subscription/{sid}")).json()["status"] == "error"
    assert receiver.received() == []
    assert [d["attempt"] for d in await deliveries_of(pool, sid)] == [1]


async def test_retries_back_off_exponentially(fhir, pool, receiver: Receiver):
    receiver.answer = lambda _r: 500
    sid = await add_subscription(pool, receiver.url)
    await notify(pool, sid, *await _patients(fhir, 1))
    got = await receiver.wait_for(5, ok_only=False)
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)][:4]
    # each wait is half fixed, half random from a step that doubles: never shorter than the last
    for k, gap in enumerate(gaps, start=1):
        assert gap >= RETRY_BASE * 2 ** (k - 1) / 2 * 0.9, gaps
    assert gaps[3] > gaps[0] * 2, gaps


async def test_after_the_retry_budget_the_subscription_is_in_error_with_the_reason(fhir, pool, receiver: Receiver):
    receiver.answer = lambda _r: 500
    family = uuid.uuid4().hex
    sid = await subscribe(fhir, r4_subscription(receiver.url, f"Patient?family={family}"))
    await create(fhir, name=[{"family": family}])
    state = await eventually(lambda: _in_status(pool, sid, "error"), seconds=30)
    assert "HTTP 500" in state["error"]
    resource = (await fhir.get(f"/Subscription/{sid}")).json()
    assert resource["status"] == "error"
    assert "HTTP 500" in resource["error"]
    count = len(receiver.received())
    await asyncio.sleep(0.5)
    assert len(receiver.received()) == count  # no more attempts in error


async def _in_status(pool: Any, sid: str, status: str) -> Any:
    state = await state_of(pool, sid)
    return state if state["status"] == status else None


async def test_a_subscription_set_back_to_requested_resumes_from_where_it_stopped(fhir, pool, receiver: Receiver):
    answered: list[int] = []
    receiver.answer = lambda r: 500 if not answered else 200
    family = uuid.uuid4().hex
    sid = await subscribe(fhir, r4_subscription(receiver.url, f"Patient?family={family}"))
    made = [await create(fhir, name=[{"family": family}]) for _ in range(2)]
    await eventually(lambda: _in_status(pool, sid, "error"), seconds=30)
    made.append(await create(fhir, name=[{"family": family}]))  # while in error: kept, not sent
    await eventually(lambda: _numbered(pool, sid, 3))
    answered.append(1)
    resource = (await fhir.get(f"/Subscription/{sid}")).json()
    assert (await fhir.put(f"/Subscription/{sid}", json={**resource, "status": "requested"})).status_code == 200
    await eventually(lambda: _delivered(pool, sid, 3))
    ok = receiver.received(ok_only=True)
    assert [r.path.rsplit("/", 1)[1] for r in ok] == [p["id"] for p in made]  # PUT [endpoint]/Patient/[id]
    assert len({r.headers["webhook-id"] for r in ok}) == 3
    assert (await state_of(pool, sid))["status"] == "active"


async def _numbered(pool: Any, sid: str, count: int) -> bool:
    return (await state_of(pool, sid))["events_since_start"] >= count


async def _delivered(pool: Any, sid: str, through: int) -> bool:
    return (await state_of(pool, sid))["delivered_through"] >= through


async def test_a_failing_subscription_holds_back_only_itself(fhir, pool):
    failing, healthy = Receiver(), Receiver()
    try:
        failing.answer = lambda _r: 500
        stuck = await add_subscription(pool, failing.url)
        flowing = await add_subscription(pool, healthy.url)
        patients = await _patients(fhir, 3)
        stuck_sent = await notify(pool, stuck, *patients)
        flowing_sent = await notify(pool, flowing, *patients)
        got = await healthy.wait_for(3)
        assert [r.headers["webhook-id"] for r in got] == [e["event_id"] for e in flowing_sent]
        # the failing one never got past its first event
        assert {r.headers["webhook-id"] for r in failing.received()} == {stuck_sent[0]["event_id"]}
        failing.answer = lambda _r: 200
        await eventually(lambda: _delivered(pool, stuck, 3), seconds=30)
        ok = failing.received(ok_only=True)
        assert [r.headers["webhook-id"] for r in ok] == [e["event_id"] for e in stuck_sent]
    finally:
        failing.stop()
        healthy.stop()


async def test_every_attempt_is_in_the_delivery_log(fhir, pool, receiver: Receiver):
    answers = iter([502])
    receiver.answer = lambda _r: next(answers, 200)
    sid = await add_subscription(pool, receiver.url)
    await notify(pool, sid, *await _patients(fhir, 2))
    await eventually(lambda: _delivered(pool, sid, 2))
    log = await deliveries_of(pool, sid)
    assert [(d["event_number"], d["kind"], d["attempt"], d["http_status"]) for d in log] == [
        (1, "event-notification", 1, 502),
        (1, "event-notification", 2, 200),
        (2, "event-notification", 1, 200),
    ]
    assert all(d["latency_ms"] is not None and d["latency_ms"] >= 0 for d in log)
    assert log[0]["error"] == "HTTP 502"


async def test_receiver_down_then_up_gets_every_matching_change_once_in_order_and_nothing_else(
    fhir, pool, receiver: Receiver
):
    receiver.stop()
    family = uuid.uuid4().hex
    sid = await subscribe(fhir, r4_subscription(receiver.url, f"Patient?family={family}"))
    matching = []
    for _ in range(4):
        matching.append(await create(fhir, name=[{"family": family}], gender="female"))
        await create(fhir, name=[{"family": f"other-{family}"}])  # never sent
    updated = {**matching[0], "gender": "male"}
    assert (await fhir.put(f"/Patient/{matching[0]['id']}", json=updated)).status_code == 200
    await eventually(lambda: _attempted(pool, sid, 2))  # it failed, and failed again
    receiver.start()
    await eventually(lambda: _delivered(pool, sid, 5), seconds=30)
    await asyncio.sleep(0.3)
    got = receiver.received(ok_only=True)
    expected = [("Patient", p["id"], 1) for p in matching] + [("Patient", matching[0]["id"], 2)]
    events = await pool.fetch(
        "SELECT o.event_id::text FROM unnest($1::text[], $2::text[], $3::int[]) WITH ORDINALITY AS k(t, i, v, n)"
        " JOIN outbox o ON o.resource_type = k.t AND o.id = k.i AND o.version_id = k.v ORDER BY k.n",
        *[list(c) for c in zip(*expected, strict=True)],
    )
    assert [r.headers["webhook-id"] for r in got] == [e[0] for e in events]
    assert [r.path for r in got] == [f"/hook/Patient/{i}" for _, i, _ in expected]
    assert [orjson.loads(r.body)["meta"]["versionId"] for r in got] == ["1", "1", "1", "1", "2"]


class _Faulty(DeliveryWorker):
    """A worker with a fault of ours in delivering one subscription's events."""

    faulty = ""

    async def _events(self, state: dict[str, Any], lease: Any) -> None:
        if state["id"] == self.faulty:
            raise RuntimeError("a fault of ours")
        await super()._events(state, lease)


async def test_a_delivery_failing_by_a_fault_of_ours_backs_off_as_a_failed_attempt_does(
    delivery_app, fhir, pool, receiver: Receiver
):
    worker = delivery_app.state.delivery
    await worker.close()  # this node's worker stands still: the faulty one claims
    try:
        sid = await add_subscription(pool, receiver.url)
        await notify(pool, sid, ("Patient", (await create(fhir))["id"]))
        retry = RetryPolicy(base_seconds=10, budget_hours=24)
        faulty = _Faulty(
            pool, worker.store, worker.sender, worker.base_url, worker.lifecycle, worker.owner_principal, retry=retry
        )
        faulty.faulty = sid
        for _ in range(3):
            await pool.execute("UPDATE subscription_state SET next_attempt_at = now() WHERE id = $1", sid)
            await faulty.claim_and_start()
            await asyncio.gather(*faulty._busy)
        wait = await pool.fetchval(
            "SELECT extract(epoch FROM next_attempt_at - now()) FROM subscription_state WHERE id = $1", sid
        )
    finally:
        await worker.start(delivery_app.state.settings.database_url)
    assert wait >= 20  # the third consecutive failure: a step of 40 s, of which at least half
    assert receiver.received() == []
