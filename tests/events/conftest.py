"""Helpers of the event tests: Subscriptions written over HTTP, notifications read back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
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
