"""The WebSocket channel of Subscriptions (docs/events.md, WebSocket).

Two protocols on one socket, chosen by how a subscription is bound:

- R4 (subscription.html#websockets): the client sends `bind <id>`, the server answers
  `bound <id>` and then sends `ping <id>` for each notification. The socket's principal
  comes from the upgrade request's `Authorization: Bearer` token.
- Subscriptions Backport IG 1.1: the client sends `bind-with-token <token>` with a token
  from `$get-ws-binding-token` (events/binding_tokens.py), the server sends a handshake
  Bundle per subscription the token names, then a notification Bundle per event (content
  as the subscription's payload asks), and a heartbeat Bundle after heartbeatPeriod
  seconds without a message for it.

A binding needs a Subscription with the websocket channel that its principal may follow
(events/access.py). Each notification is read through that principal's rights when it
is sent: one it may not read is not sent (no ping, no Bundle), a full-resource payload
is read as it may see it (hidden elements removed). A refused bind is answered
`error <id> <reason>` (R4) or an OperationOutcome (backport).

Bounds: sockets per node (EHR_WS_MAX_CONNECTIONS), subscriptions per socket
(MAX_BINDINGS), the size of a client message (MAX_MESSAGE_BYTES) and their rate
(MAX_COMMANDS_PER_MINUTE), a socket with nothing bound is closed after IDLE_SECONDS,
and one that does not keep up (QUEUE notifications waiting, or a message not taken in
SEND_SECONDS) is closed: it cannot hold the others back. A socket ends when the token
that opened or bound it expires or is revoked (close code 1008); the client reconnects
with a new one and replays what it missed with `$events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..auth.principal import Principal
from ..auth.tokens import AccessTokens
from ..fhir import json as fhir_json
from ..fhir.outcome import FhirError, Issue, operation_outcome
from ..store import ResourceStore
from .access import followed_subscription, visible_content
from .binding_tokens import MAX_SUBSCRIPTIONS, BindingTokens, InvalidBindingToken
from .fanout import Hub
from .notification import notification_body

log = logging.getLogger("headless_ehr.events")

MAX_BINDINGS = MAX_SUBSCRIPTIONS  # subscriptions bound on one socket
MAX_MESSAGE_BYTES = 32 * 1024  # a client message (a binding token is a few kB)
MAX_COMMANDS_PER_MINUTE = 120  # client messages on one socket (each bind reads the database)
IDLE_SECONDS = 60.0  # a socket with nothing bound is closed after this long
QUEUE = 1000  # notifications waiting on one socket before it is closed as too slow
SEND_SECONDS = 30.0  # a message the client does not take in this long closes the socket as too slow

POLICY = 1008  # close codes (RFC 6455 §7.4.1)
TRY_AGAIN_LATER = 1013
NORMAL = 1000

Row = Mapping[str, Any]


@dataclass(eq=False)
class Binding:
    """A socket following one subscription (a fanout.Follower)."""

    session: Session
    subscription_id: str
    principal: Principal
    bundles: bool  # backport (bind-with-token): Bundles; R4 (bind): pings
    after: int
    state: Row
    last_sent: float = field(default_factory=time.monotonic)

    def offer(self, state: Row, notifications: Sequence[Row]) -> None:
        self.state = state
        self.after = notifications[-1]["event_number"]
        self.session.queue_events(self, notifications)

    def gone(self) -> None:
        self.session.unbound(self)

    def heartbeat_due(self) -> float | None:
        """When a heartbeat Bundle is due: heartbeatPeriod after the last message, while active."""
        seconds = self.state["heartbeat_seconds"]
        active = self.state["status"] == "active"
        return self.last_sent + seconds if self.bundles and seconds and active else None


class WebSocketChannel:
    """The node's sockets: how many are open, and what they share."""

    def __init__(
        self,
        hub: Hub,
        store: ResourceStore,
        db: asyncpg.Pool,
        binding_tokens: BindingTokens,
        tokens: AccessTokens | None,
        max_connections: int,
    ) -> None:
        self.hub = hub
        self.store = store
        self.db = db
        self.binding_tokens = binding_tokens
        self.tokens = tokens
        self.max_connections = max_connections
        self.open = 0

    async def serve(self, socket: WebSocket, principal: Principal | None, base: str) -> None:
        """Run one accepted-to-be socket until it closes. principal: of the upgrade request's
        bearer token (None without one: only `bind-with-token` can bind then)."""
        if self.open >= self.max_connections:
            await socket.accept()
            await socket.close(TRY_AGAIN_LATER, "too many WebSocket connections on this node; try again later")
            return
        self.open += 1
        try:
            await socket.accept()
            await Session(self, socket, principal, base).run()
        finally:
            self.open -= 1


class Session:
    """One socket: its bindings, its queue of messages, its reader and writer."""

    def __init__(self, channel: WebSocketChannel, socket: WebSocket, principal: Principal | None, base: str) -> None:
        self.channel = channel
        self.socket = socket
        self.principal = principal
        self.base = base
        self.store = channel.store.on_base(base)
        self.bindings: dict[str, Binding] = {}
        self._outbox: deque[str | tuple[Binding, Row]] = deque()
        self._events = 0  # notifications waiting in _outbox
        self._signal = asyncio.Event()
        self._closing: tuple[int, str] | None = None
        self._idle_since = time.monotonic()
        self._commands: deque[float] = deque()

    # -- what the hub and the reader put in ----------------------------------------------

    def queue_events(self, binding: Binding, notifications: Sequence[Row]) -> None:
        if self._events + len(notifications) > QUEUE:
            self.close(POLICY, f"too slow: more than {QUEUE} notifications waiting on this socket")
            return
        self._outbox.extend((binding, n) for n in notifications)
        self._events += len(notifications)
        self._signal.set()

    def send(self, text: str) -> None:
        self._outbox.append(text)
        self._signal.set()

    def close(self, code: int, reason: str) -> None:
        if self._closing is None:
            self._closing = (code, reason[:120])  # a close reason is at most 123 bytes
        self._signal.set()

    def unbound(self, binding: Binding) -> None:
        if self.bindings.get(binding.subscription_id) is binding:
            del self.bindings[binding.subscription_id]
            self.channel.hub.remove(binding)
            if not self.bindings:
                self._idle_since = time.monotonic()

    # -- running --------------------------------------------------------------------------

    async def run(self) -> None:
        reader = asyncio.create_task(self._read())
        try:
            await self._write()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError, OSError):
                await reader  # a socket gone under the reader: nothing more to do with it
            for binding in list(self.bindings.values()):
                self.channel.hub.remove(binding)
            self.bindings.clear()
            if self._closing is not None and self.socket.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await self.socket.close(*self._closing)

    async def _read(self) -> None:
        try:
            while True:
                message = await self.socket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    raw = message.get("bytes") or b""
                    text = raw.decode("utf-8", "replace") if len(raw) <= MAX_MESSAGE_BYTES else None
                if text is None or len(text) > MAX_MESSAGE_BYTES:
                    self.close(1009, f"a message may be at most {MAX_MESSAGE_BYTES} bytes")
                    break
                if not self._counted():
                    self.close(POLICY, f"more than {MAX_COMMANDS_PER_MINUTE} messages a minute")
                    break
                try:
                    await self._command(text.strip())
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                    log.warning("websocket: a command failed on the database (%r)", error)
                    self.send("error the server could not answer now; try again")
        finally:
            if self._closing is None:
                self._closing = (NORMAL, "")
                self._signal.set()

    def _counted(self) -> bool:
        now = time.monotonic()
        while self._commands and self._commands[0] < now - 60:
            self._commands.popleft()
        self._commands.append(now)
        return len(self._commands) <= MAX_COMMANDS_PER_MINUTE

    async def _write(self) -> None:
        while True:
            if self._closing is not None:
                return
            if not self._outbox:
                self._signal.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._signal.wait(), self._timeout())
            if self._closing is not None:
                return
            if self._expired():
                return
            if not self.bindings and time.monotonic() - self._idle_since > IDLE_SECONDS and not self._outbox:
                self.close(NORMAL, f"nothing bound for {IDLE_SECONDS:.0f} s")
                return
            await self._heartbeats()
            while self._outbox and self._closing is None:
                item = self._outbox.popleft()
                if isinstance(item, str):
                    await self._send(item)
                    continue
                self._events -= 1
                try:
                    await self._notify(*item)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                    # the client replays from its last eventNumber with $events
                    log.warning("websocket: a notification could not be read (%r); closing the socket", error)
                    self.close(TRY_AGAIN_LATER, "notifications cannot be read now; reconnect and replay with $events")

    def _timeout(self) -> float:
        """Seconds until something is due without a message: a heartbeat, an expiry, the idle limit."""
        now = time.monotonic()
        due = [now + IDLE_SECONDS if self.bindings else self._idle_since + IDLE_SECONDS]
        due += [d for b in self.bindings.values() if (d := b.heartbeat_due()) is not None]
        wall = time.time()
        due += [now + p.expires_at - wall for p in self._principals() if p.expires_at is not None]
        return max(0.01, min(due) - now)

    def _principals(self) -> list[Principal]:
        found = [b.principal for b in self.bindings.values()]
        return found if self.principal is None else [self.principal, *found]

    def _expired(self) -> bool:
        """Whether a token this socket acts with has expired or been revoked (the socket is then closed)."""
        tokens = self.channel.tokens
        for principal in self._principals():
            if principal.expires_at is not None and principal.expires_at <= time.time():
                self.close(POLICY, "the access token has expired")
                return True
            if tokens is not None and principal.token_id and tokens.is_revoked(principal.token_id):
                self.close(POLICY, "the access token has been revoked")
                return True
        return False

    async def _heartbeats(self) -> None:
        now = time.monotonic()
        for binding in list(self.bindings.values()):
            due = binding.heartbeat_due()
            if due is not None and due <= now:
                await self._send_bundle(binding, "heartbeat", [], {})

    # -- commands -------------------------------------------------------------------------

    async def _command(self, text: str) -> None:
        verb, _, argument = text.partition(" ")
        argument = argument.strip()
        if verb == "bind":
            await self._bind(argument)
        elif verb == "bind-with-token":
            await self._bind_with_token(argument)
        else:
            self.send(f"error unknown command '{verb[:40]}': send 'bind <id>' or 'bind-with-token <token>'")

    async def _bind(self, subscription_id: str) -> None:
        """R4: `bind <id>` with the socket's own token."""
        if self.principal is None:
            self.send(
                f"error {subscription_id[:64]} this socket has no access token (Authorization: Bearer on connect)"
            )
            return
        try:
            await self._follow(subscription_id, self.principal, bundles=False)
        except FhirError as error:
            self.send(f"error {subscription_id[:64]} {error}")
            return

    async def _bind_with_token(self, token: str) -> None:
        """Backport: `bind-with-token <token>`: a handshake Bundle per subscription it names."""
        try:
            grant = await self.channel.binding_tokens.verify(token, self.base)
        except InvalidBindingToken as error:
            self.send(fhir_json.dumps(operation_outcome([Issue("error", "security", str(error))])).decode())
            return
        for subscription_id in grant.subscriptions:
            try:
                binding = await self._follow(subscription_id, grant.principal, bundles=True)
            except FhirError as error:
                self.send(fhir_json.dumps(operation_outcome(error.issues)).decode())
                continue
            self.send(notification_body(binding.state, "handshake", [], {}, self.base).decode())

    async def _follow(self, subscription_id: str, principal: Principal, *, bundles: bool) -> Binding:
        """Bind (or bind again: the same follower, the new principal) a subscription the principal may follow."""
        state = await followed_subscription(self.store, self.channel.db, principal, subscription_id)
        if state["channel"] != "websocket":
            raise FhirError.of(422, "invalid", f"Subscription/{subscription_id} does not have the websocket channel")
        old = self.bindings.get(subscription_id)
        if old is None and len(self.bindings) >= MAX_BINDINGS:
            raise FhirError.of(422, "too-costly", f"at most {MAX_BINDINGS} subscriptions may be bound on one socket")
        if old is not None:
            old.principal, old.bundles = principal, bundles
            if not bundles:
                self.send(f"bound {subscription_id}")
            return old
        binding = Binding(self, subscription_id, principal, bundles, state["events_since_start"], state)
        if not bundles:
            self.send(f"bound {subscription_id}")
        self.bindings[subscription_id] = binding
        self.channel.hub.add(binding)
        return binding

    # -- notifications --------------------------------------------------------------------

    async def _notify(self, binding: Binding, notification: Row) -> None:
        if self.bindings.get(binding.subscription_id) is not binding:
            return  # unbound meanwhile
        full = binding.bundles and binding.state["payload"] == "full-resource"
        content = await visible_content(self.store, binding.principal, notification, full)
        if content is None:
            return
        if binding.bundles:
            resources = {notification["event_number"]: content} if content else {}
            await self._send_bundle(binding, "event-notification", [notification], resources)
        else:
            await self._send(f"ping {binding.subscription_id}")
            binding.last_sent = time.monotonic()

    async def _send(self, text: str) -> None:
        """Send, or close a socket whose client has not taken a message for SEND_SECONDS."""
        try:
            await asyncio.wait_for(self.socket.send_text(text), SEND_SECONDS)
        except TimeoutError:
            self.close(POLICY, f"too slow: a message waited {SEND_SECONDS:.0f} s to be sent")

    async def _send_bundle(self, binding: Binding, kind: str, notifications: list[Row], resources: dict) -> None:
        body = notification_body(binding.state, kind, notifications, resources, self.base)
        await self._send(body.decode())
        binding.last_sent = time.monotonic()


async def start_websockets(app: Any, stack: contextlib.AsyncExitStack, settings: Any) -> None:
    """The node's WebSocket channel: its fan-out from the database, and what sockets share."""
    state = app.state
    events_pool = getattr(state, "events_pool", None) or state.pool  # the events workers' (events/service.py)
    hub = Hub(events_pool, settings.database_url)
    hub.start()
    stack.push_async_callback(hub.close)
    binding_tokens = BindingTokens(state.signing_keys, state.tokens, state.policies, events_pool)
    tokens = state.tokens if settings.auth else None
    state.websockets = WebSocketChannel(
        hub, state.store, state.pool, binding_tokens, tokens, settings.ws_max_connections
    )
