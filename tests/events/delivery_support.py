"""Fixtures and helpers of the delivery tests: an app on a database of its own with
retries in fractions of a second, and subscriptions and their notifications written as
the relay writes them (subscription_state, subscription_notification, NOTIFY ehr_events)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from headless_ehr.app import create_app
from headless_ehr.config import Settings
from headless_ehr.events.outbox import interaction_of
from tests.conftest import bearer, mint_token, scratch_database

from .conftest import add_notifications
from .conftest import topic as topic_resource
from .webhook_receiver import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BASE = "http://ehr.test/fhir"  # EHR_PUBLIC_BASE_URL: notifications name resources under it
RETRY_BASE = 0.05  # seconds
RETRY_HOURS = 0.001  # 3.6 s from the first failure to error


@pytest.fixture(scope="module")
async def delivery_app(server_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    async with scratch_database(server_dsn, "ehr_delivery") as url:
        settings = Settings(
            database_url=url,
            data_dir=tmp_path_factory.mktemp("ehr-delivery"),
            rate_limit_per_minute=10_000_000,
            public_base_url=BASE,
            webhook_retry_base_seconds=RETRY_BASE,
            webhook_retry_hours=RETRY_HOURS,
            webhook_timeout_seconds=2.0,
            webhook_blocked_networks=(),  # the receivers are on loopback
        )
        application = create_app(settings)
        async with application.router.lifespan_context(application):
            yield application


@pytest.fixture
async def fhir(delivery_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=delivery_app)
    headers = bearer(mint_token(delivery_app, base_url=BASE))
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as c:
        yield c


@pytest.fixture
async def pool(delivery_app: Any) -> asyncpg.Pool:
    return delivery_app.state.pool


@pytest.fixture
def receiver() -> Any:
    r = Receiver()
    yield r
    r.stop()


async def add_subscription(
    pool: asyncpg.Pool,
    endpoint: str,
    *,
    status: str = "active",
    payload: str = "full-resource",
    r4_style: bool = False,
    secret: str | None = SECRET,
    headers: list[str] | None = None,
    heartbeat: int | None = None,
    owner: dict[str, Any] | None = None,
) -> str:
    """A rest-hook subscription's state alone, as the relay keeps it, with no triggers (the
    relay matches nothing for it: its notifications come from notify())."""
    sid = f"sub-{uuid.uuid4().hex[:12]}"
    await pool.execute(
        "INSERT INTO subscription_state (id, owner, status, triggers, topic, channel, endpoint, payload, r4_style,"
        " headers, secret, heartbeat_seconds, last_sent_at, since_at)"
        " VALUES ($1, $2::jsonb, $3, '[]', $4, 'rest-hook', $5, $6, $7, $8::jsonb, $9, $10, now(), now())",
        sid,
        orjson.dumps(owner or {"system": True}).decode(),
        status,
        None if r4_style else "http://ehr.test/topic/patients",
        endpoint,
        payload,
        r4_style,
        orjson.dumps(headers or []).decode(),
        secret,
        heartbeat,
    )
    return sid


# -- real Subscriptions, through the API (the relay matches their events) ---------------------

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
SECRET_EXTENSION = "https://headless-ehr.dev/fhir/StructureDefinition/subscription-secret"


def r4_subscription(endpoint: str, criteria: str, *, payload: str | None = "application/fhir+json") -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint}
    if payload:
        channel["payload"] = payload
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "delivery test",
        "criteria": criteria,
        "channel": channel,
        "extension": [{"url": SECRET_EXTENSION, "valueString": SECRET}],
    }


def backport_subscription(
    endpoint: str, topic: str, *, content: str = "full-resource", filters: tuple[str, ...] = (), heartbeat: int = 0
) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": endpoint,
        "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": BACKPORT + "backport-payload-content", "valueCode": content}]},
    }
    if heartbeat:
        channel["extension"] = [{"url": BACKPORT + "backport-heartbeat-period", "valueUnsignedInt": heartbeat}]
    subscription = {
        "resourceType": "Subscription",
        "meta": {"profile": [BACKPORT + "backport-subscription"]},
        "status": "requested",
        "reason": "delivery test",
        "criteria": topic,
        "channel": channel,
        "extension": [{"url": SECRET_EXTENSION, "valueString": SECRET}],
    }
    if filters:
        extensions = [{"url": BACKPORT + "backport-filter-criteria", "valueString": f} for f in filters]
        subscription["_criteria"] = {"extension": extensions}
    return subscription


async def topic(fhir: httpx.AsyncClient, resource_type: str = "Patient") -> str:
    """A SubscriptionTopic (a Basic, per the IG) on every change of resource_type, filterable by family and _id."""
    url = f"http://ehr.test/topic/{uuid.uuid4().hex[:12]}"
    basic = topic_resource(
        url,
        resource_type,
        ("create", "update", "delete"),
        can_filter_by=((resource_type, "family"), (resource_type, "_id")),
    )
    answer = await fhir.post("/Basic", json=basic)
    assert answer.status_code == 201, answer.text
    return url


async def subscribe(fhir: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await fhir.post("/Subscription", json=resource)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


async def create(fhir: httpx.AsyncClient, resource_type: str = "Patient", **fields: Any) -> dict[str, Any]:
    answer = await fhir.post(f"/{resource_type}", json={"resourceType": resource_type, **fields})
    assert answer.status_code == 201, answer.text
    return answer.json()


async def notify(pool: asyncpg.Pool, sid: str, *references: tuple[str, str]) -> list[dict[str, Any]]:
    """Notifications of the latest outbox events of `references` (Type, id), numbered on
    from the subscription's count, as the relay adds them; returns them in order."""
    events = []
    for rtype, rid in references:
        row = await pool.fetchrow(
            "SELECT event_id, seq, version_id, method, created_at FROM outbox"
            " WHERE resource_type = $1 AND id = $2 ORDER BY seq DESC LIMIT 1",
            rtype,
            rid,
        )
        interaction = interaction_of(row["method"], row["version_id"])
        events.append((row["event_id"], row["seq"], rtype, rid, row["version_id"], interaction, row["created_at"]))
    numbers = await add_notifications(pool, sid, events)
    return [
        {"event_number": n, "event_id": str(e[0]), "type": e[2], "id": e[3]}
        for n, e in zip(numbers, events, strict=True)
    ]


async def state_of(pool: asyncpg.Pool, sid: str) -> asyncpg.Record:
    return await pool.fetchrow("SELECT * FROM subscription_state WHERE id = $1", sid)


async def deliveries_of(pool: asyncpg.Pool, sid: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM subscription_delivery WHERE subscription_id = $1 ORDER BY at", sid)


async def eventually(check: Any, seconds: float = 20.0) -> Any:
    """Await check() until it returns something true (then that), or fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
