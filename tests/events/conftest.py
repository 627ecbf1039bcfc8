"""Helpers of the event tests: Subscriptions written over HTTP, notifications read back."""

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

FHIR_JSON = {"Content-Type": "application/fhir+json"}
HOOK = "http://127.0.0.1:9/hook"  # nothing listens: these tests look at what is notified, not sent


def subscription(criteria: str, *, kind: str = "rest-hook", **extra: Any) -> dict[str, Any]:
    """A Subscription (extra: its elements; `channel`: elements of its channel)."""
    ch: dict[str, Any] = {"type": kind}
    if kind == "rest-hook":
        ch["endpoint"] = HOOK
    ch.update(extra.pop("channel", {}))
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": criteria,
        "channel": ch,
        **extra,
    }


def observation(code: str, patient: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "urn:test:events", "code": code}]},
        **extra,
    }
    if patient is not None:
        out["subject"] = {"reference": f"Patient/{patient}"}
    return out


def code() -> str:
    return uuid.uuid4().hex


async def create(client: httpx.AsyncClient, resource: dict[str, Any], status: int = 201) -> dict[str, Any]:
    res = await client.post(f"/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
    assert res.status_code == status, res.text
    return res.json()


def status_values(parameters: dict[str, Any]) -> dict[str, Any]:
    """A SubscriptionStatus (Parameters) as name -> value; `events`: each notification-event's parts, likewise."""
    assert parameters["resourceType"] == "Parameters"
    out: dict[str, Any] = {"events": []}
    for p in parameters["parameter"]:
        if p["name"] == "notification-event":
            out["events"].append({q["name"]: _value(q) for q in p["part"]})
        else:
            out[p["name"]] = _value(p)
    return out


def notification_status(bundle: dict[str, Any]) -> dict[str, Any]:
    """The status_values() of a notification Bundle (type history, its SubscriptionStatus in entry 0)."""
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
    return status_values(bundle["entry"][0]["resource"])


def _value(element: dict[str, Any]) -> Any:
    return next(v for k, v in element.items() if k.startswith("value"))


async def notified(db: asyncpg.Pool, sub_id: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT event_number, event_id, event_seq, resource_type, resource_id, version_id, interaction"
        " FROM subscription_notification WHERE subscription_id = $1 ORDER BY event_number",
        sub_id,
    )


async def settle(app: Any) -> None:
    """Until the relay has handled every event committed so far."""
    pool: asyncpg.Pool = app.state.pool
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        behind = await pool.fetchval(
            "SELECT count(*) FROM outbox o, event_cursor c WHERE c.name = 'subscriptions'"
            " AND (o.created_at, o.seq) > (c.after_at, c.after_seq)"
        )
        if behind == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the relay did not catch up within 10 s")


async def wait_notified(db: asyncpg.Pool, sub_id: str, count: int, seconds: float = 10) -> list[asyncpg.Record]:
    """The subscription's notifications once there are `count` (or after `seconds`)."""
    deadline = time.monotonic() + seconds
    while True:
        rows = await notified(db, sub_id)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.02)


async def add_notifications(db: asyncpg.Pool, sid: str, events: list[tuple[Any, ...]]) -> list[int]:
    """Notifications of the subscription for events (event_id, seq, type, id, version, interaction,
    occurred_at), numbered on from its count and NOTIFYed in one transaction, as the relay commits
    them (events/relay.py); their event numbers."""
    async with db.acquire() as conn, conn.transaction():
        last = await conn.fetchval(
            "UPDATE subscription_state SET events_since_start = events_since_start + $2 WHERE id = $1"
            " RETURNING events_since_start",
            sid,
            len(events),
        )
        numbers = list(range(last - len(events) + 1, last + 1))
        await conn.executemany(
            "INSERT INTO subscription_notification (subscription_id, event_number, event_id, event_seq,"
            " resource_type, resource_id, version_id, interaction, occurred_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [(sid, n, *e) for n, e in zip(numbers, events, strict=True)],
        )
        await conn.execute("SELECT pg_notify('ehr_events', $1)", orjson.dumps({"subscriptions": [sid]}).decode())
    return numbers


@pytest.fixture
async def subscriptions(client: httpx.AsyncClient) -> AsyncIterator[list[str]]:
    """Ids of Subscriptions a test made: deleted afterwards, so they match nothing later."""
    made: list[str] = []
    yield made
    for sid in made:
        await client.delete(f"/Subscription/{sid}")


XVER = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic."
BACKPORT_PROFILE = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"
FILTER = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria"


def topic(
    url: str,
    resource: str = "Observation",
    interactions: tuple[str, ...] = ("create", "update"),
    current: str | None = None,
    can_filter_by: tuple[tuple[str | None, str], ...] = (("Observation", "code"),),
    **trigger_extra: Any,
) -> dict[str, Any]:
    """A SubscriptionTopic as a Basic (Subscriptions Backport IG, R4)."""
    trigger: list[dict[str, Any]] = [
        {"url": "resource", "valueUri": f"http://hl7.org/fhir/StructureDefinition/{resource}"}
    ]
    trigger += [{"url": "supportedInteraction", "valueCode": i} for i in interactions]
    if current is not None:
        trigger.append({"url": "queryCriteria", "extension": [{"url": "current", "valueString": current}]})
    trigger += trigger_extra.pop("parts", [])
    extensions: list[dict[str, Any]] = [
        {"url": XVER + "url", "valueUri": url},
        {"url": XVER + "resourceTrigger", "extension": trigger},
    ]
    for rtype, param in can_filter_by:
        parts: list[dict[str, Any]] = [{"url": "filterParameter", "valueString": param}]
        if rtype is not None:
            parts.insert(0, {"url": "resource", "valueUri": rtype})
        extensions.append({"url": XVER + "canFilterBy", "extension": parts})
    return {
        "resourceType": "Basic",
        "code": {"coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]},
        "extension": extensions,
    }


def topic_subscription(url: str, *filters: str, kind: str = "rest-hook", **extra: Any) -> dict[str, Any]:
    """A backport (topic-based) Subscription with filter criteria."""
    out = subscription(url, kind=kind, **extra)
    out["meta"] = {"profile": [BACKPORT_PROFILE]}
    if filters:
        out["_criteria"] = {"extension": [{"url": FILTER, "valueString": f} for f in filters]}
    return out
