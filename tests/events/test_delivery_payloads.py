"""What each kind of rest-hook subscription sends: R4 payloads, backport Bundles, handshake,
heartbeat, channel headers, and full resources read through the owner's rights."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson
import pytest

from headless_ehr.auth.bootstrap import admin_client_file
from tests.conftest import bearer, mint_token

from .conftest import notification_status
from .delivery_support import (
    BASE,
    add_subscription,
    backport_subscription,
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
    topic,
)
from .webhook_receiver import Receiver

__all__ = ["delivery_app", "fhir", "pool", "receiver"]  # fixtures, used by name


def _status(got: Any) -> dict[str, Any]:
    return notification_status(orjson.loads(got.body))


# -- R4 criteria subscriptions ---------------------------------------------------------------


async def test_r4_empty_payload_posts_to_the_endpoint_without_a_body(fhir, pool, receiver: Receiver):
    sid = await add_subscription(pool, receiver.url, r4_style=True, payload="empty")
    patient = await create(fhir)
    await notify(pool, sid, ("Patient", patient["id"]))
    (got,) = await receiver.wait_for(1)
    assert (got.method, got.path, got.body) == ("POST", "/hook", b"")
    assert "content-type" not in got.headers


async def test_r4_full_resource_puts_the_resource_at_endpoint_type_id(fhir, pool, receiver: Receiver):
    sid = await add_subscription(pool, receiver.url, r4_style=True, payload="full-resource")
    patient = await create(fhir, birthDate="1970-01-01")
    await notify(pool, sid, ("Patient", patient["id"]))
    (got,) = await receiver.wait_for(1)
    assert (got.method, got.path) == ("PUT", f"/hook/Patient/{patient['id']}")
    assert got.headers["content-type"] == "application/fhir+json"
    assert orjson.loads(got.body) == patient


async def test_r4_full_resource_sends_the_version_of_the_event(fhir, pool, receiver: Receiver):
    sid = await add_subscription(pool, receiver.url, r4_style=True, payload="full-resource")
    first = await create(fhir, gender="male")
    await notify(pool, sid, ("Patient", first["id"]))
    answer = await fhir.put(f"/Patient/{first['id']}", json={**first, "gender": "female"})
    assert answer.status_code == 200
    await notify(pool, sid, ("Patient", first["id"]))
    got = await receiver.wait_for(2)
    assert [orjson.loads(r.body)["gender"] for r in got] == ["male", "female"]
    assert [orjson.loads(r.body)["meta"]["versionId"] for r in got] == ["1", "2"]


async def test_r4_full_resource_deletion_is_a_delete_at_endpoint_type_id(fhir, pool, receiver: Receiver):
    sid = await add_subscription(pool, receiver.url, r4_style=True, payload="full-resource")
    patient = await create(fhir)
    assert (await fhir.delete(f"/Patient/{patient['id']}")).status_code in (200, 204)
    await notify(pool, sid, ("Patient", patient["id"]))
    (got,) = await receiver.wait_for(1)
    assert (got.method, got.path, got.body) == ("DELETE", f"/hook/Patient/{patient['id']}", b"")


async def test_r4_id_only_posts_a_bundle_naming_the_resource_without_it(fhir, pool, receiver: Receiver):
    sid = await add_subscription(pool, receiver.url, r4_style=True, payload="id-only")
    patient = await create(fhir)
    await notify(pool, sid, ("Patient", patient["id"]))
    (got,) = await receiver.wait_for(1)
    assert got.method == "POST"
    entries = orjson.loads(got.body)["entry"]
    assert entries[1]["fullUrl"] == f"{BASE}/Patient/{patient['id']}"
    assert "resource" not in entries[1]


# -- backport topic subscriptions ---------------------------------------------------------


async def test_backport_full_resource_bundle_carries_status_event_and_resource(fhir, pool, receiver: Receiver):
    sid = await add_subscription(pool, receiver.url, payload="full-resource")
    patient = await create(fhir)
    sent = await notify(pool, sid, ("Patient", patient["id"]))
    (got,) = await receiver.wait_for(1)
    assert got.method == "POST" and got.path == "/hook"
    bundle = orjson.loads(got.body)
    assert bundle["id"] == sent[0]["event_id"]  # a resent notification is the same Bundle
    status = _status(got)
    assert status["subscription"]["reference"] == f"{BASE}/Subscription/{sid}"
    assert status["topic"] == "http://ehr.test/topic/patients"
    assert status["type"] == "event-notification"
    assert status["events-since-subscription-start"] == "1"
    (parts,) = status["events"]
    assert parts["event-number"] == "1"
    assert parts["focus"]["reference"] == f"{BASE}/Patient/{patient['id']}"
    entry = bundle["entry"][1]
    assert entry["resource"] == patient
    assert entry["request"] == {"method": "POST", "url": "Patient"}
    assert entry["response"]["status"].startswith("201")


async def test_backport_id_only_bundle_names_the_focus_without_the_resource(fhir, pool, receiver: Receiver):
    sid = await add_subscription(pool, receiver.url, payload="id-only")
    patient = await create(fhir)
    await notify(pool, sid, ("Patient", patient["id"]))
    (got,) = await receiver.wait_for(1)
    (parts,) = _status(got)["events"]
    assert parts["focus"]["reference"] == f"{BASE}/Patient/{patient['id']}"
    entries = orjson.loads(got.body)["entry"]
    assert [e["fullUrl"] for e in entries[1:]] == [f"{BASE}/Patient/{patient['id']}"]
    assert "resource" not in entries[1]


async def test_backport_empty_bundle_names_no_focus(fhir, pool, receiver: Receiver):
    sid = await add_subscription(pool, receiver.url, payload="empty")
    patient = await create(fhir)
    await notify(pool, sid, ("Patient", patient["id"]))
    (got,) = await receiver.wait_for(1)
    bundle = orjson.loads(got.body)
    assert len(bundle["entry"]) == 1
    (parts,) = _status(got)["events"]
    assert set(parts) == {"event-number", "timestamp"}
    assert patient["id"] not in got.body.decode()


async def test_a_backport_subscription_is_activated_by_a_handshake_answered_2xx(fhir, pool, receiver: Receiver):
    sid = await subscribe(fhir, backport_subscription(receiver.url, await topic(fhir)))
    assert (await fhir.get(f"/Subscription/{sid}")).json()["status"] == "requested"
    (got,) = await receiver.wait_for(1)
    status = _status(got)
    assert status["type"] == "handshake"
    assert status["status"] == "requested"
    assert status["events"] == []
    await eventually(lambda: _status_is(pool, sid, "active"))
    assert (await fhir.get(f"/Subscription/{sid}")).json()["status"] == "active"
    log = await eventually(lambda: deliveries_of(pool, sid))
    assert [(d["kind"], d["http_status"]) for d in log] == [("handshake", 200)]


async def test_a_handshake_that_is_never_answered_2xx_ends_in_error(fhir, pool, receiver: Receiver):
    receiver.answer = lambda _r: 404
    sid = await subscribe(fhir, backport_subscription(receiver.url, await topic(fhir)))
    state = await eventually(lambda: _status_is(pool, sid, "error"), seconds=30)
    assert "HTTP 404" in state["error"]
    assert len(receiver.received()) > 1
    assert len({r.headers["webhook-id"] for r in receiver.received()}) == 1  # one handshake, retried
    assert (await fhir.get(f"/Subscription/{sid}")).json()["status"] == "error"


async def test_a_backport_subscription_delivers_matching_events_once_activated(fhir, pool, receiver: Receiver):
    family = uuid.uuid4().hex
    url = await topic(fhir)
    sid = await subscribe(fhir, backport_subscription(receiver.url, url, filters=(f"Patient?family={family}",)))
    await eventually(lambda: _status_is(pool, sid, "active"))
    matching = await create(fhir, name=[{"family": family}])
    await create(fhir, name=[{"family": "someone-else"}])
    got = await receiver.wait_for(2)
    await asyncio.sleep(0.3)
    events = [r for r in receiver.received() if _status(r)["type"] == "event-notification"]
    assert len(events) == 1
    assert orjson.loads(events[0].body)["entry"][1]["resource"]["id"] == matching["id"]
    assert got[0].headers["webhook-id"] != events[0].headers["webhook-id"]


async def _status_is(pool: Any, sid: str, status: str) -> Any:
    state = await state_of(pool, sid)
    return state if state["status"] == status else None


async def test_an_idle_subscription_gets_heartbeats_every_heartbeat_period(fhir, pool, receiver: Receiver):
    quiet = (f"Patient?family={uuid.uuid4().hex}",)  # no event matches: it stays idle
    sid = await subscribe(fhir, backport_subscription(receiver.url, await topic(fhir), heartbeat=1, filters=quiet))
    await eventually(lambda: _status_is(pool, sid, "active"))
    await receiver.wait_for(3, seconds=10)
    kinds = [_status(r)["type"] for r in receiver.received()]
    assert kinds[:3] == ["handshake", "heartbeat", "heartbeat"]
    got = receiver.received()[1:3]
    assert 0.8 <= got[1].at - got[0].at <= 3.0
    assert got[0].headers["webhook-id"] != got[1].headers["webhook-id"]


async def test_channel_headers_are_sent_but_never_in_place_of_the_servers(fhir, pool, receiver: Receiver):
    headers = ["Authorization: Bearer secret-token", "X-Tenant: north", "webhook-id: forged", "Content-Type: text/x"]
    sid = await add_subscription(pool, receiver.url, headers=headers)
    sent = await notify(pool, sid, ("Patient", (await create(fhir))["id"]))
    (got,) = await receiver.wait_for(1)
    assert got.headers["authorization"] == "Bearer secret-token"
    assert got.headers["x-tenant"] == "north"
    assert got.headers["webhook-id"] == sent[0]["event_id"]
    assert got.headers["content-type"] == "application/fhir+json"


# -- the owner's rights at delivery time ----------------------------------------------------


async def test_a_resource_the_owner_may_not_read_is_not_sent_and_delivery_moves_on(
    delivery_app, fhir, pool, receiver: Receiver
):
    mine, other = await create(fhir), await create(fhir)
    owner = {"sub": "patient-app", "scope": "patient/*.read", "client_id": "patient-app", "patient": mine["id"]}
    sid = await add_subscription(pool, receiver.url, r4_style=True, payload="full-resource", owner=owner)
    await notify(pool, sid, ("Patient", other["id"]), ("Patient", mine["id"]))
    (got,) = await receiver.wait_for(1)
    assert got.path == f"/hook/Patient/{mine['id']}"
    await asyncio.sleep(0.2)
    assert len(receiver.received()) == 1
    log = await deliveries_of(pool, sid)
    assert [(d["event_number"], d["http_status"], d["error"]) for d in log] == [
        (1, None, "skipped: not readable"),
        (2, 200, None),
    ]


async def test_a_resource_deleted_since_the_event_is_still_sent_in_the_version_of_the_event(
    fhir, pool, receiver: Receiver
):
    sid = await add_subscription(pool, receiver.url, r4_style=True, payload="full-resource")
    patient = await create(fhir)
    await notify(pool, sid, ("Patient", patient["id"]))
    receiver.stop()
    await eventually(lambda: _tried(pool, sid))
    # what was created was notified; a later deletion is a later event of its own
    assert (await fhir.delete(f"/Patient/{patient['id']}")).status_code in (200, 204)
    receiver.start()
    (got,) = await receiver.wait_for(1, seconds=30)
    assert orjson.loads(got.body)["id"] == patient["id"]


async def _tried(pool: Any, sid: str) -> bool:
    return bool(await deliveries_of(pool, sid))


# -- the admin API ------------------------------------------------------------------------------


async def test_admins_read_the_delivery_log_of_a_subscription(delivery_app, fhir, pool, receiver: Receiver):
    answers = iter([500])
    receiver.answer = lambda _r: next(answers, 200)
    sid = await add_subscription(pool, receiver.url)
    await notify(pool, sid, ("Patient", (await create(fhir))["id"]))
    await eventually(lambda: _delivered(pool, sid))
    admin = _admin(delivery_app)
    answer = await admin.get(f"/admin/subscriptions/{sid}/deliveries")
    await admin.aclose()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["subscription"]["delivered_through"] == 1
    assert [(d["attempt"], d["http_status"]) for d in body["deliveries"]] == [(2, 200), (1, 500)]  # newest first
    assert all(isinstance(d["latency_ms"], float) for d in body["deliveries"])


async def _delivered(pool: Any, sid: str) -> bool:
    return (await state_of(pool, sid))["delivered_through"] >= 1


def _admin(app: Any) -> httpx.AsyncClient:
    """A client holding a system/*.* token of the bootstrap admin client."""
    client_id = orjson.loads(admin_client_file(app.state.settings.data_dir).read_bytes())["client_id"]
    token = mint_token(app, "system/*.*", base_url=BASE, subject=client_id, client_id=client_id)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ehr.test", headers=bearer(token))


async def test_the_delivery_log_is_for_admins_only(delivery_app, fhir, pool, receiver: Receiver):
    sid = await add_subscription(pool, receiver.url)
    token = mint_token(delivery_app, "system/*.*", base_url=BASE)  # a system client, not an admin one
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=delivery_app), base_url="http://ehr.test", headers=bearer(token)
    ) as c:
        answer = await c.get(f"/admin/subscriptions/{sid}/deliveries")
    assert answer.status_code == 403
    assert answer.json()["resourceType"] == "OperationOutcome"


async def test_the_delivery_log_of_an_unknown_subscription_is_404(delivery_app):
    admin = _admin(delivery_app)
    answer = await admin.get("/admin/subscriptions/nothing-here/deliveries")
    bad = await admin.get("/admin/subscriptions/nothing-here/deliveries?_count=0")
    await admin.aclose()
    assert answer.status_code == 404
    assert bad.status_code == 400


async def test_a_failed_heartbeat_is_retried_with_the_same_id(fhir, pool, receiver: Receiver):
    quiet = (f"Patient?family={uuid.uuid4().hex}",)
    receiver.answer = lambda r: 500 if _status(r)["type"] == "heartbeat" else 200
    sid = await subscribe(fhir, backport_subscription(receiver.url, await topic(fhir), heartbeat=1, filters=quiet))
    await eventually(lambda: _status_is(pool, sid, "active"))

    async def two_beats() -> list[Any]:
        beats = [r for r in receiver.received() if _status(r)["type"] == "heartbeat"]
        return beats if len(beats) >= 2 else []

    beats = await eventually(two_beats, seconds=10)
    assert beats[0].headers["webhook-id"] == beats[1].headers["webhook-id"]
    assert beats[1].at - beats[0].at < 0.9  # a retry's wait, not another heartbeat period


async def test_a_full_resource_is_sent_without_the_elements_the_owners_policy_hides(
    delivery_app, fhir, pool, receiver: Receiver
):
    policy = f"no-telecom-{uuid.uuid4().hex[:8]}"
    rules = [
        {"resourceType": "Patient", "interactions": ["read", "vread", "search"], "hiddenElements": ["telecom"]},
        {"resourceType": "Subscription", "interactions": ["read", "search", "create", "update", "delete"]},
    ]
    client_id = f"hooks-{uuid.uuid4().hex[:8]}"
    async with _admin(delivery_app) as admin:
        assert (await admin.post("/admin/policies", json={"name": policy, "rules": rules})).status_code == 201
        client = {"name": "hooks", "client_id": client_id, "scopes": ["system/*.*"], "policies": [policy]}
        assert (await admin.post("/admin/clients", json=client)).status_code == 201
    token = mint_token(delivery_app, "system/*.*", base_url=BASE, subject=client_id, client_id=client_id)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=delivery_app), base_url=BASE, headers=bearer(token)
    ) as owner:
        family = uuid.uuid4().hex
        await subscribe(owner, r4_subscription(receiver.url, f"Patient?family={family}"))
    patient = await create(fhir, name=[{"family": family}], telecom=[{"system": "phone", "value": "555-0100"}])
    (got,) = await receiver.wait_for(1)
    sent = orjson.loads(got.body)
    assert sent["id"] == patient["id"] and sent["name"] == patient["name"]
    assert "telecom" not in sent
    assert any(t.get("code") == "SUBSETTED" for t in sent["meta"]["tag"])


@pytest.mark.parametrize("before", ["0001-01-01T00:00:00%2B14:00", "9999-12-31T23:59:59-14:00"])
async def test_the_delivery_log_refuses_a_before_out_of_range_with_400(delivery_app, pool, receiver: Receiver, before):
    sid = await add_subscription(pool, receiver.url)
    admin = _admin(delivery_app)
    answer = await admin.get(f"/admin/subscriptions/{sid}/deliveries?before={before}")
    await admin.aclose()
    assert answer.status_code == 400, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"
