"""Rest-hook delivery: each subscription's notifications to its endpoint, in order, at least once.

Every `ehr serve` process runs a DeliveryWorker on the events pool (application_name
headless-ehr-events: it never writes a resource, history or outbox row). It is woken by
LISTEN `ehr_events` (the relay's NOTIFY when it has added notifications) and by a timer
for retries and heartbeats, then claims due subscriptions with a short
`FOR UPDATE SKIP LOCKED` statement that sets a lease (`lease_until`): no transaction is
open during HTTP, and one node at a time delivers a subscription. A node killed
mid-delivery leaves its lease to expire; another node then resends from
`delivered_through`, with the same webhook-ids.

A subscription's notifications go strictly in event_number order. A failure stops its
batch and backs off (exponential with jitter from EHR_WEBHOOK_RETRY_BASE_SECONDS,
capped at an hour a step); once EHR_WEBHOOK_RETRY_HOURS have passed since its first
failure, the subscription goes to `error` (Subscription.error says why). A failing
subscription holds back only itself. Every attempt is logged in subscription_delivery.

What is sent (docs/events.md, Webhooks):
- backport (topic) subscriptions: POST the notification Bundle (events/notification.py),
  one event each: handshake when `requested` (2xx makes it `active`), heartbeats every
  heartbeatPeriod while idle;
- R4 criteria subscriptions: payload empty: POST, no body; full-resource: PUT
  `[endpoint]/[type]/[id]` with the resource, DELETE there for a deletion; id-only: POST
  the id-only notification Bundle. An R4 subscription in `requested` is made `active`
  without a message (R4 has no handshake).
Full resources are read at delivery time as the subscription's owner: a resource the
owner may no longer read (access changed, a Consent) is not sent; the attempt is logged
as skipped and delivery moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from ..auth.policies import Policies, masked
from ..auth.principal import Principal
from ..config import Settings
from ..db.listen import Listener
from ..db.periodic import cancel
from ..db.pool import jsonb_value
from ..store import ResourceStore
from . import lifecycle
from .notification import notification_body
from .outbox import EVENTS_CHANNEL
from .owner import owner_principal, owner_with_policy
from .webhook import Attempt, WebhookSender

log = logging.getLogger("headless_ehr.events.delivery")

BATCH = 100  # notifications read per claim of a subscription
MAX_IDLE_SECONDS = 5.0  # a timer wakes the worker at least this often (a lost NOTIFY, a new subscription)
STEP_CAP_SECONDS = 3600.0  # the longest wait between two attempts
CLOSE_GRACE_SECONDS = 5.0  # at shutdown, deliveries in flight may finish for this long
_EVENT_IDS = uuid.UUID("6f1c9e0a-6a49-4d5e-9d0c-3f8f1f4b8a10")  # namespace of handshake and heartbeat ids


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a failing subscription again, and when to give up."""

    base_seconds: float = 2.0
    budget_hours: float = 24.0
    cap_seconds: float = STEP_CAP_SECONDS

    def delay(self, failures: int) -> float:
        """Seconds before the next attempt after `failures` consecutive failures: doubling
        from base, capped, with jitter (half fixed, half random) so that endpoints coming
        back are not hit by every node and subscription at once."""
        step = min(self.cap_seconds, self.base_seconds * 2.0 ** min(failures - 1, 48))
        return step / 2 + random.uniform(0, step / 2)

    def exhausted(self, failing_since: datetime, now: datetime) -> bool:
        """Attempts have spread over the whole budget since the first failure."""
        return now - failing_since >= timedelta(hours=self.budget_hours)


class Lifecycle:
    """A Subscription's status changes as the server, through the store (events/lifecycle.py)."""

    def __init__(self, store: ResourceStore) -> None:
        self.store = store

    async def activate(self, subscription_id: str) -> None:
        await lifecycle.activate(self.store, subscription_id)

    async def fail(self, subscription_id: str, error: str) -> None:
        await lifecycle.fail(self.store, subscription_id, error)


class Owners:
    """A subscription's owner as a Principal with its current access policy (events/owner.py)."""

    MAX_KEPT = 10_000

    def __init__(self, policies: Policies | None) -> None:
        self.policies = policies
        # the same Principal object for the same owner: its access answers and the
        # policies' cache (keyed by identity) are kept from one batch to the next
        self._kept: dict[tuple[str, str], Principal] = {}

    async def __call__(self, state: Mapping[str, Any]) -> Principal:
        key = (state["id"], str(state["owner"]))
        principal = self._kept.get(key)
        if principal is None:
            if len(self._kept) >= self.MAX_KEPT:
                self._kept.clear()
            principal = self._kept[key] = owner_principal(jsonb_value(state["owner"]))
        return await owner_with_policy(state["id"], principal, self.policies)


OwnerPrincipal = Callable[[Mapping[str, Any]], Awaitable[Principal]]


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """One request of a notification: None body sends none."""

    method: str
    url: str
    body: bytes | None
    message_id: str


@dataclass(slots=True)
class _Logged:
    event_number: int | None
    kind: str
    attempt: int
    at: datetime
    status: int | None
    latency_ms: float | None
    error: str | None


# A subscription this node may deliver now: rest-hook, not ended, lease free, its retry
# time reached, and something to send (a handshake, notifications, or a heartbeat).
_DUE = """
    channel = 'rest-hook' AND status IN ('requested', 'active') AND endpoint IS NOT NULL
    AND (end_at IS NULL OR end_at > now())
"""
_HEARTBEAT_AT = "coalesce(last_sent_at, created_at) + make_interval(secs => heartbeat_seconds)"
_CLAIM = f"""
WITH due AS (
    SELECT id FROM subscription_state
    WHERE {_DUE}
        AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now())
        AND (status = 'requested' OR delivered_through < events_since_start
             OR (heartbeat_seconds IS NOT NULL AND {_HEARTBEAT_AT} <= now()))
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE subscription_state s SET lease_until = clock_timestamp() + make_interval(secs => $2)
FROM due WHERE s.id = due.id
RETURNING s.*
"""
# seconds until something is due (None: nothing waits)
_NEXT_DUE = f"""
SELECT extract(epoch FROM min(greatest(due, coalesce(lease_until, due))) - now())::float8 FROM (
    SELECT lease_until, CASE
        WHEN status = 'requested' OR delivered_through < events_since_start THEN next_attempt_at
        WHEN heartbeat_seconds IS NOT NULL THEN greatest(next_attempt_at, {_HEARTBEAT_AT})
    END AS due
    FROM subscription_state WHERE {_DUE}
) d
"""
_PENDING = """
SELECT event_number, event_id, resource_type, resource_id, version_id, interaction, occurred_at
FROM subscription_notification WHERE subscription_id = $1 AND event_number > $2
ORDER BY event_number LIMIT $3
"""
# The outcome of a claim in one statement: its attempts logged (unless the subscription
# was deleted meanwhile: its log went with it), what was delivered, and the retry state;
# the lease is let go only if it is still ours (a node that outlived its lease must not
# free another's).
_SETTLE = """
WITH logged AS (
    INSERT INTO subscription_delivery (subscription_id, event_number, kind, attempt, at, http_status, latency_ms, error)
    SELECT $1, * FROM unnest($7::bigint[], $8::text[], $9::int[], $10::timestamptz[], $11::int[], $12::float8[],
                             $13::text[])
    WHERE EXISTS (SELECT 1 FROM subscription_state WHERE id = $1)
)
UPDATE subscription_state SET
    delivered_through = greatest(delivered_through, $3),
    attempts = CASE WHEN $4 THEN attempts + 1 ELSE 0 END,
    failing_since = CASE WHEN $4 THEN coalesce(failing_since, now()) END,
    next_attempt_at = now() + make_interval(secs => $5),
    last_sent_at = CASE WHEN $6 THEN now() ELSE last_sent_at END,
    lease_until = CASE WHEN lease_until = $2 THEN NULL ELSE lease_until END
WHERE id = $1
RETURNING failing_since, now()
"""
_NOTHING_LOGGED: list[list[Any]] = [[], [], [], [], [], [], []]


class DeliveryWorker:
    """This node's rest-hook deliveries."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: ResourceStore,
        sender: WebhookSender,
        base_url: str,
        lifecycle: Lifecycle,
        owner_principal: OwnerPrincipal,
        *,
        retry: RetryPolicy | None = None,
        concurrency: int = 16,
    ) -> None:
        self.pool = pool  # the events pool
        self.store = store  # reads of full resources, as the owner (main pool)
        self.sender = sender
        self.base_url = base_url
        self.lifecycle = lifecycle
        self.owner_principal = owner_principal
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        # a lease outlasts one batch: new requests start only in its first third, and each
        # is bounded by the sender's timeout (webhook.py)
        self.lease_seconds = 3 * sender.timeout * 1.5 + 5
        self._batch_seconds = sender.timeout
        self._wake = asyncio.Event()
        self._busy: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._listener: Listener | None = None

    # -- running ---------------------------------------------------------------------------

    async def start(self, dsn: str | None = None) -> None:
        """Run in the background, woken by LISTEN `ehr_events` on dsn (none: by the timer only)."""
        if dsn is not None:
            self._listener = Listener(dsn, EVENTS_CHANNEL, self._notified)
            self._listener.start()
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop claiming; let deliveries in flight finish for a few seconds, then cancel them
        (their leases expire and a node sends them again, with the same ids)."""
        await cancel(self._task)
        self._task = None
        if self._busy:
            _, pending = await asyncio.wait(self._busy, timeout=CLOSE_GRACE_SECONDS)
            await asyncio.gather(*(cancel(task) for task in pending))
        if self._listener is not None:
            await self._listener.close()

    def wake(self, *_: object) -> None:
        self._wake.set()

    def _notified(self, payload: str | None) -> None:
        """The relay numbered new notifications: a round unless they are all for websockets
        (None: the listener (re)connected, so a NOTIFY may have been missed)."""
        if payload is None or '"rest-hook"' in payload or '"websocket"' not in payload:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            wait = MAX_IDLE_SECONDS
            try:
                free = self.concurrency - len(self._busy)
                claimed = await self.claim_and_start()
                if claimed and claimed == free:
                    continue  # every free slot taken: there may be more due
                if len(self._busy) < self.concurrency:
                    due = await self.pool.fetchval(_NEXT_DUE)
                    if due is not None:  # (never a busy loop: another node may just have taken it)
                        wait = min(wait, max(due, 0.01))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("delivery round failed; trying again shortly", exc_info=True)
                wait = 1.0
            except Exception:  # a fault of ours must not end this node's deliveries
                log.exception("delivery round failed; trying again shortly")
                wait = 1.0
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def claim_and_start(self) -> int:
        """Claim what is due (up to the free slots) and start delivering it; how many."""
        free = self.concurrency - len(self._busy)
        if free <= 0:
            return 0
        rows = await self.pool.fetch(_CLAIM, free, self.lease_seconds)
        for row in rows:
            task = asyncio.create_task(self._deliver(dict(row)))
            self._busy.add(task)
            task.add_done_callback(self._done)
        return len(rows)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._busy.discard(task)
        self.wake()

    # -- one subscription ------------------------------------------------------------------

    async def _deliver(self, state: dict[str, Any]) -> None:
        lease = state["lease_until"]
        try:
            if state["status"] == "requested":
                await self._handshake(state, lease)
            elif state["delivered_through"] < state["events_since_start"]:
                await self._events(state, lease)
            else:
                await self._heartbeat(state, lease)
        except Exception:
            # a fault of ours (or the database away): a failed attempt, so it backs off as one
            # does (it neither spins nor fills the log) and is given up on after the budget
            log.exception("delivery to subscription %s failed", state["id"])
            fault = Attempt(None, 0.0, "the server failed to deliver (see its log)")
            with contextlib.suppress(Exception):
                await self._settle(state, lease, state["delivered_through"], [], fault, sent=False)

    async def _handshake(self, state: dict[str, Any], lease: datetime) -> None:
        # activated before the lease is let go: else this or another node could claim it,
        # still `requested`, and send the handshake again
        if state["r4_style"]:  # R4 has no handshake: checked at create, active now
            await self.lifecycle.activate(state["id"])
            await self._settle(state, lease, state["delivered_through"], [], None, sent=False)
            return
        message_id = _stable_id(state, "handshake", state["created_at"], state["delivered_through"])
        body = notification_body(state, "handshake", [], {}, self.base_url, bundle_id=message_id)
        attempt = await self._send(state, _Outgoing("POST", state["endpoint"], body, message_id))
        logged = [_log(None, "handshake", state["attempts"] + 1, attempt)]
        failed = None if attempt.ok else attempt
        if attempt.ok:
            await self.lifecycle.activate(state["id"])
        await self._settle(state, lease, state["delivered_through"], logged, failed, sent=attempt.ok)

    async def _heartbeat(self, state: dict[str, Any], lease: datetime) -> None:
        since = state["last_sent_at"] or state["created_at"]
        message_id = _stable_id(state, "heartbeat", since, state["events_since_start"])
        body = notification_body(state, "heartbeat", [], {}, self.base_url, bundle_id=message_id)
        attempt = await self._send(state, _Outgoing("POST", state["endpoint"], body, message_id))
        logged = [_log(None, "heartbeat", state["attempts"] + 1, attempt)]
        failed = None if attempt.ok else attempt
        # a failed heartbeat is retried as itself (same id) until the budget is spent
        await self._settle(state, lease, state["delivered_through"], logged, failed, sent=attempt.ok)

    async def _events(self, state: dict[str, Any], lease: datetime) -> None:
        stop_at = time.monotonic() + self._batch_seconds  # the reads below count too
        pending = await self.pool.fetch(_PENDING, state["id"], state["delivered_through"], BATCH)
        owner = await self.owner_principal(state)
        resources = await self._readable(state, owner, pending)
        delivered = state["delivered_through"]
        logged: list[_Logged] = []
        failed: Attempt | None = None
        sent = False
        for n in pending:
            if time.monotonic() > stop_at:
                break  # the lease must outlast what is in flight: the rest on the next claim
            number = n["event_number"]
            tries = state["attempts"] + 1 if number == state["delivered_through"] + 1 else 1
            outgoing = self._outgoing(state, n, resources)
            if outgoing is None:  # the owner may no longer read it: not sent, and not waited for
                logged.append(_Logged(number, "event-notification", tries, _now(), None, None, "skipped: not readable"))
                delivered = number
                continue
            attempt = await self._send(state, outgoing)
            logged.append(_log(number, "event-notification", tries, attempt))
            if not attempt.ok:
                failed = attempt
                break
            delivered, sent = number, True
        await self._settle(state, lease, delivered, logged, failed, sent)

    async def _send(self, state: Mapping[str, Any], outgoing: _Outgoing) -> Attempt:
        return await self.sender.send(
            outgoing.method,
            outgoing.url,
            outgoing.body,
            outgoing.message_id,
            secret=state["secret"],
            channel_headers=jsonb_value(state["headers"]) or (),
        )

    def _outgoing(
        self, state: Mapping[str, Any], n: Mapping[str, Any], resources: Mapping[tuple[str, str, int], bytes]
    ) -> _Outgoing | None:
        """The request that delivers notification n (None: the owner may not read its resource)."""
        message_id = str(n["event_id"])
        endpoint: str = state["endpoint"]
        payload = state["payload"]
        deletion = n["interaction"] == "delete"
        content = None
        if payload == "full-resource" and not deletion:
            content = resources.get((n["resource_type"], n["resource_id"], n["version_id"]))
            if content is None:
                return None
        if state["r4_style"] and payload in ("empty", "full-resource"):
            if payload == "empty":
                return _Outgoing("POST", endpoint, None, message_id)
            url = f"{endpoint.rstrip('/')}/{n['resource_type']}/{n['resource_id']}"
            return _Outgoing("DELETE" if deletion else "PUT", url, content, message_id)
        # backport, and R4 id-only: the notification Bundle of this one event
        active = {**state, "status": "active"}  # events are sent only once it is active
        resources = {} if content is None else {n["event_number"]: content}
        body = notification_body(active, "event-notification", [n], resources, self.base_url, bundle_id=message_id)
        return _Outgoing("POST", endpoint, body, message_id)

    async def _readable(
        self, state: Mapping[str, Any], owner: Principal, pending: list[asyncpg.Record]
    ) -> dict[tuple[str, str, int], bytes]:
        """For full-resource payloads, the versions of the events as the owner may see them
        now (hidden elements removed); one the owner may not read (403, 404, a Consent) is
        missing."""
        if state["payload"] != "full-resource":
            return {}
        wanted = [(n["resource_type"], n["resource_id"], n["version_id"]) for n in pending]
        wanted = [key for key, n in zip(wanted, pending, strict=True) if n["interaction"] != "delete"]
        found = await self.store.vread_many(owner, list(dict.fromkeys(wanted)))
        return {key: masked(owner, key[0], stored.content) for key, stored in found.items() if stored.content}

    async def _settle(
        self,
        state: Mapping[str, Any],
        lease: datetime,
        delivered: int,
        logged: list[_Logged],
        failed: Attempt | None,
        sent: bool,
    ) -> None:
        """Record the attempts and the outcome (one statement); on failure back off, and past
        the retry budget put the subscription in error."""
        delay = self.retry.delay(state["attempts"] + 1) if failed else 0.0
        columns = _NOTHING_LOGGED
        if logged:
            rows = ((e.event_number, e.kind, e.attempt, e.at, e.status, e.latency_ms, e.error) for e in logged)
            columns = [list(c) for c in zip(*rows, strict=True)]
        outcome = (delivered, failed is not None, delay, sent)
        row = await self.pool.fetchrow(_SETTLE, state["id"], lease, *outcome, *columns)
        if failed is not None and row is not None and failed.permanent:
            await self.lifecycle.fail(state["id"], f"delivery to the endpoint is refused: {failed.error}")
        elif failed is not None and row is not None and self.retry.exhausted(row[0], row[1]):
            why = failed.error or f"HTTP {failed.status}"
            await self.lifecycle.fail(
                state["id"], f"delivery to the endpoint failed since {row[0].isoformat()} (last: {why})"
            )


def _stable_id(state: Mapping[str, Any], kind: str, since: datetime, number: int) -> str:
    """The webhook-id of a handshake or heartbeat: the same on each retry of that message."""
    return str(uuid.uuid5(_EVENT_IDS, f"{state['id']}/{kind}/{since.isoformat()}/{number}"))


def _now() -> datetime:
    return datetime.now(UTC)


def _log(number: int | None, kind: str, attempt_number: int, attempt: Attempt) -> _Logged:
    return _Logged(number, kind, attempt_number, _now(), attempt.status, attempt.latency_ms, attempt.error)


# -- assembly -------------------------------------------------------------------------------


def notification_base(settings: Settings) -> str:
    """The FHIR base notifications name resources under: EHR_PUBLIC_BASE_URL, else this
    host's (a worker has no request to take the Host from)."""
    return (settings.public_base_url or f"http://localhost{settings.base_path}").rstrip("/")


async def start_delivery(
    app: Any, stack: contextlib.AsyncExitStack, settings: Settings, pool: asyncpg.Pool
) -> DeliveryWorker:
    """This node's DeliveryWorker on the events pool (application_name headless-ehr-events),
    closed with the stack (app.state.delivery)."""
    dsn = settings.database_url
    assert dsn is not None
    sender = WebhookSender(
        settings.webhook_timeout_seconds,
        max_connections=2 * settings.webhook_concurrency,
        blocked_networks=settings.webhook_blocked_networks,
    )
    stack.push_async_callback(sender.close)
    store: ResourceStore = app.state.store
    worker = DeliveryWorker(
        pool,
        store,
        sender,
        notification_base(settings),
        Lifecycle(store),
        Owners(getattr(app.state, "policies", None)),
        retry=RetryPolicy(settings.webhook_retry_base_seconds, settings.webhook_retry_hours),
        concurrency=settings.webhook_concurrency,
    )
    await worker.start(dsn)
    stack.push_async_callback(worker.close)
    app.state.delivery = worker
    return worker
