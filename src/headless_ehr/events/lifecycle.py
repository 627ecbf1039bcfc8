"""Subscriptions' lifecycle: the write hooks that keep `subscription_state` (and the
topic index) in step with the resources, and the server's own status changes.

Status (R4 subscription-status): a client writes `requested` (or `active`, read as a
request) or `off`. The server answers `active` at once for R4 criteria and websocket
channels; a backport rest-hook stays `requested` until the delivery's handshake calls
activate() or fail(). `error` (with Subscription.error) comes from fail(); a client
setting `requested` again resumes where delivery stopped. After `end` the server sets
`off`. The server's changes are new versions written through the store as SERVER,
which never changes the owner.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from ..auth.principal import Principal
from ..fhir import json as fhir_json
from ..fhir.outcome import FhirError
from ..store.model import StoredResource
from ..store.repository import ResourceStore
from .owner import owner_claims, tag_patient, with_owner_tag
from .subscription import SubscriptionRequest, Trigger, check_rights, read_subscription
from .topics import FilterBy, Topic, is_topic, read_topic, topic_triggers

log = logging.getLogger("headless_ehr.events")

# The server changing a Subscription's status (activation, error, end): a principal of
# its own, told apart by identity, so the hook keeps the owner and the status as written.
SERVER = Principal(subject="headless-ehr-events", system=True)

MAX_ERROR_CHARS = 1000

_BUMP = "UPDATE subscription_generation SET generation = generation + 1"
_KNOWN = "SELECT true FROM subscription_state WHERE id = $1"
_UPSERT = """
INSERT INTO subscription_state (
    id, owner, status, triggers, topic, channel, endpoint, payload, r4_style, headers, secret,
    heartbeat_seconds, end_at, error, since_at, since_seq, filters, updated_at)
VALUES ($1, $2::jsonb, $3, $4::jsonb, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13, $14, $15, $16, $17::jsonb, now())
ON CONFLICT (id) DO UPDATE SET
    owner = EXCLUDED.owner, status = EXCLUDED.status, triggers = EXCLUDED.triggers, topic = EXCLUDED.topic,
    channel = EXCLUDED.channel, endpoint = EXCLUDED.endpoint, payload = EXCLUDED.payload,
    r4_style = EXCLUDED.r4_style, headers = EXCLUDED.headers, secret = EXCLUDED.secret,
    heartbeat_seconds = EXCLUDED.heartbeat_seconds, end_at = EXCLUDED.end_at, error = EXCLUDED.error,
    since_at = EXCLUDED.since_at, since_seq = EXCLUDED.since_seq, filters = EXCLUDED.filters, updated_at = now()
"""
# resuming from error: delivery starts again at once with the first undelivered notification
_RESUME = (
    "UPDATE subscription_state SET attempts = 0, failing_since = NULL, next_attempt_at = now(), lease_until = NULL"
    " WHERE id = $1"
)
_POSITION = (
    "SELECT created_at, seq FROM outbox WHERE created_at = $1 AND resource_type = 'Subscription'"
    " AND id = $2 AND version_id = $3"
)


def _now() -> datetime:
    return datetime.now(UTC)


class SubscriptionHook:
    """Subscription writes (store/hooks.py): checked before, state kept after."""

    def check(self, principal: Principal, resource: dict[str, Any]) -> dict[str, Any]:
        request = read_subscription(resource)
        if principal is SERVER:
            return resource
        if request.trigger is not None:
            check_rights(principal, [request.trigger])  # a topic's triggers: once resolved (written)
        out = with_owner_tag(resource, tag_patient(principal))
        if request.status in ("requested", "active"):
            out["status"] = "requested" if request.needs_handshake else "active"
            out.pop("error", None)
        if request.end is not None and request.end <= _now():
            out["status"] = "off"
        return out

    async def written(
        self, store: ResourceStore, conn: asyncpg.Connection, principal: Principal, stored: StoredResource
    ) -> None:
        if stored.deleted:
            await conn.execute("DELETE FROM subscription_state WHERE id = $1", stored.id)
            await conn.execute("DELETE FROM subscription_notification WHERE subscription_id = $1", stored.id)
            await conn.execute("DELETE FROM subscription_delivery WHERE subscription_id = $1", stored.id)
            await conn.execute(_BUMP)
            return
        assert stored.content is not None
        if stored.method is None and await conn.fetchval(_KNOWN, stored.id):
            return  # nothing changed
        request = read_subscription(fhir_json.loads(stored.content))
        old = await conn.fetchrow(
            "SELECT status, owner, since_at, since_seq FROM subscription_state WHERE id = $1 FOR UPDATE", stored.id
        )
        server = principal is SERVER
        if not server and request.status == "error" and (old is None or old["status"] != "error"):
            raise FhirError.of(
                422, "processing", "status error is set by the server; write requested or off", "Subscription.status"
            )
        claims = orjson.loads(old["owner"]) if server and old is not None else owner_claims(principal)
        triggers = await _triggers(conn, request)
        if not server:  # the server's status changes keep the owner, whose rights the relay applies
            check_rights(principal, triggers)
        if old is None or (old["status"] == "off" and request.status != "off"):
            since = await conn.fetchrow(_POSITION, stored.last_updated, stored.id, stored.version_id)
            since_at, since_seq = (since[0], since[1]) if since is not None else (stored.last_updated, 0)
        else:
            since_at, since_seq = old["since_at"], old["since_seq"]
        await conn.execute(
            _UPSERT,
            stored.id,
            orjson.dumps(claims).decode(),
            request.status,
            orjson.dumps([t.json() for t in triggers]).decode(),
            request.topic,
            request.channel,
            request.endpoint,
            request.payload,
            request.r4_style,
            orjson.dumps(list(request.headers)).decode(),
            request.secret,
            request.heartbeat_seconds,
            request.end,
            request.error if request.status == "error" else None,
            since_at,
            since_seq,
            orjson.dumps([[t, [list(p) for p in ps]] for t, ps in request.filters]).decode(),
        )
        if old is not None and old["status"] == "error" and request.status in ("requested", "active"):
            await conn.execute(_RESUME, stored.id)
        await conn.execute(_BUMP)


async def _triggers(conn: asyncpg.Connection, request: SubscriptionRequest) -> list[Trigger]:
    if request.trigger is not None:
        return [request.trigger]
    assert request.topic is not None
    row = await conn.fetchrow(
        "SELECT url, triggers, can_filter_by FROM subscription_topic WHERE url = $1", request.topic
    )
    if row is None:
        raise FhirError.of(
            422, "not-found", f"no SubscriptionTopic with url {request.topic[:200]} is known", "Subscription.criteria"
        )
    topic = Topic(
        row["url"],
        tuple(Trigger.of(t) for t in orjson.loads(row["triggers"])),
        tuple(FilterBy.of(f) for f in orjson.loads(row["can_filter_by"])),
    )
    return topic_triggers(topic, request.filters)


class TopicHook:
    """Basic writes: a SubscriptionTopic is checked, and indexed by its canonical URL."""

    def check(self, principal: Principal, resource: dict[str, Any]) -> dict[str, Any]:
        if is_topic(resource):
            read_topic(resource)
        return resource

    async def written(
        self, store: ResourceStore, conn: asyncpg.Connection, principal: Principal, stored: StoredResource
    ) -> None:
        known = await conn.fetchval("SELECT true FROM subscription_topic WHERE id = $1", stored.id)
        if stored.method is None and known:
            return  # nothing changed
        await conn.execute("DELETE FROM subscription_topic WHERE id = $1", stored.id)
        if stored.deleted:
            return
        assert stored.content is not None
        resource = fhir_json.loads(stored.content)
        if not is_topic(resource):
            return
        topic = read_topic(resource)
        added = await conn.fetchval(
            "INSERT INTO subscription_topic (url, id, triggers, can_filter_by) VALUES ($1, $2, $3::jsonb, $4::jsonb)"
            " ON CONFLICT (url) DO NOTHING RETURNING true",
            topic.url,
            stored.id,
            orjson.dumps([t.json() for t in topic.triggers]).decode(),
            orjson.dumps([f.json() for f in topic.can_filter_by]).decode(),
        )
        if not added:
            raise FhirError.of(
                409, "duplicate", f"another SubscriptionTopic has the url {topic.url[:200]}", "Basic.extension"
            )
        if known:
            await _retrigger(conn, topic)


async def _retrigger(conn: asyncpg.Connection, topic: Topic) -> None:
    """A changed topic applies to its Subscriptions at once; 422 when it would no longer
    allow one's filter criteria (change or delete that Subscription first)."""
    rows = await conn.fetch("SELECT id, filters FROM subscription_state WHERE topic = $1 FOR UPDATE", topic.url)
    for row in rows:
        filters = tuple((t, tuple((n, v) for n, v in ps)) for t, ps in orjson.loads(row["filters"]))
        try:
            triggers = topic_triggers(topic, filters)
        except FhirError:
            raise FhirError.of(
                422,
                "processing",
                f"this change of the topic would no longer allow the filter criteria of Subscription/{row['id']}",
                "Basic.extension",
            ) from None
        await conn.execute(
            "UPDATE subscription_state SET triggers = $2::jsonb, updated_at = now() WHERE id = $1",
            row["id"],
            orjson.dumps([t.json() for t in triggers]).decode(),
        )
    if rows:
        await conn.execute(_BUMP)


# -- the server's status changes -------------------------------------------------------------


async def _set_status(store: ResourceStore, subscription_id: str, status: str, error: str | None = None) -> bool:
    """Write the Subscription's status as SERVER (a new version, unless nothing changes);
    False when it is gone or off (a client's off is never overridden but by `off`)."""

    def change(resource: dict[str, Any]) -> dict[str, Any]:
        if resource.get("status") == "off" and status != "off":
            return resource
        out = {**resource, "status": status}
        if error is None:
            out.pop("error", None)
        else:
            out["error"] = error[:MAX_ERROR_CHARS]
        return out

    try:
        outcome = await store.patch(SERVER, "Subscription", subscription_id, change)
    except FhirError as exc:
        if exc.status in (404, 410):
            return False
        raise
    return fhir_json.loads(outcome.stored.content or b"{}").get("status") == status


async def activate(store: ResourceStore, subscription_id: str) -> bool:
    """requested -> active (the handshake succeeded); False when the Subscription is gone or off."""
    return await _set_status(store, subscription_id, "active")


async def fail(store: ResourceStore, subscription_id: str, message: str) -> bool:
    """-> error with Subscription.error = message (handshake failed, retries spent)."""
    return await _set_status(store, subscription_id, "error", message)


async def end_expired(store: ResourceStore, events_pool: asyncpg.Pool, limit: int = 100) -> int:
    """Set `off` every Subscription whose `end` has passed; returns how many."""
    ids = await events_pool.fetch(
        "SELECT id FROM subscription_state WHERE end_at <= now() AND status <> 'off' ORDER BY end_at LIMIT $1", limit
    )
    done = 0
    for row in ids:
        try:
            if await _set_status(store, row["id"], "off"):
                done += 1
        except FhirError as error:  # one that cannot be written holds back no other
            log.warning("could not set Subscription/%s off: %s", row["id"], error.issues[0].diagnostics)
    return done
