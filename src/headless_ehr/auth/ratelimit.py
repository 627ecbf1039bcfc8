"""Rate limits: EHR_RATE_LIMIT_PER_MINUTE requests per client and per source address.

Two counters, both applied: the source address (the client's, read through trusted
proxies only, as rest/origin.py does) is counted by an ASGI middleware before anything
else runs, on /fhir, /oauth and /admin; the client (a token's `client_id`) is counted
once the token is verified (`limit_clients` wraps the authenticator). Anonymous requests
count under their address only. Over either: 429 with Retry-After.

The counters are the `limits` library's fixed one-minute windows, the cheapest of its
strategies (one increment; ~6 µs in memory, one round trip to Redis): a client may spend
its minute's allowance at the end of one window and again at the start of the next. They
live in Redis when EHR_REDIS_URL is set (shared by every node), in memory otherwise.
A Redis outage must not take the API down, so the limiter fails open: a request is
let through unlimited when Redis cannot be asked, a warning is logged, and Redis is
not asked again for a few seconds (so each request does not wait for a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from ..fhir import json as fhir_json
from ..fhir.outcome import FhirError, Issue, operation_outcome
from ..rest.origin import client_hop, is_trusted, node_address, parse_forwarded
from .authenticate import Authenticator
from .principal import Principal

log = logging.getLogger("headless_ehr.auth")

REDIS_TIMEOUT = 0.25  # seconds a rate-limit check may wait for Redis
OUTAGE_PAUSE = 5.0  # seconds Redis is not asked after it failed


class _Memory(MemoryStorage):
    """limits' memory storage, sweeping expired keys at most every 10 s.

    Its own sweep walks every key after each hit, so its cost grows with the number of
    addresses seen in a minute (1.7 ms a request at 20,000): a flood from many addresses
    would slow everyone. Expired counters are ignored on read anyway; the sweep only frees memory.
    """

    _next_sweep = 0.0

    async def _MemoryStorage__schedule_expiry(self) -> None:  # overrides the name-mangled private method
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + 10
            await super()._MemoryStorage__schedule_expiry()  # type: ignore[misc]


def _redis_uri(url: str) -> str:
    """limits names its asyncio Redis storage `async+redis://`; accept the usual `redis://` too."""
    return url if url.startswith("async+") else "async+" + url


class RateLimits:
    """Counters of requests per key in one-minute windows."""

    def __init__(self, per_minute: int, redis_url: str | None = None, key_prefix: str = "ehr") -> None:
        self.item = RateLimitItemPerMinute(per_minute)
        self.shared = redis_url is not None
        storage: Storage
        if redis_url:
            storage = RedisStorage(
                _redis_uri(redis_url),
                implementation="redispy",
                key_prefix=f"{key_prefix}:ratelimit",
                wrap_exceptions=True,
                socket_timeout=REDIS_TIMEOUT,
                socket_connect_timeout=REDIS_TIMEOUT,
            )
        else:
            storage = _Memory()
        self.storage = storage
        self.limiter = FixedWindowRateLimiter(storage)
        self._paused_until = 0.0

    @classmethod
    def of(cls, settings: Settings) -> RateLimits | None:
        if settings.rate_limit_per_minute <= 0:
            return None
        return cls(settings.rate_limit_per_minute, settings.redis_url, settings.redis_key_prefix)

    async def hit(self, kind: str, key: str) -> int | None:
        """Count one request of key; None when within the limit, else the seconds to wait."""
        if self._paused_until and time.monotonic() < self._paused_until:
            return None
        try:
            if not self.shared:
                if await self.limiter.hit(self.item, kind, key):
                    return None
                stats = await self.limiter.get_window_stats(self.item, kind, key)
            else:  # a Redis that accepts but does not answer (or the client's retries) waits this long at most
                async with asyncio.timeout(4 * REDIS_TIMEOUT):
                    if await self.limiter.hit(self.item, kind, key):
                        return None
                    stats = await self.limiter.get_window_stats(self.item, kind, key)
        except Exception as error:  # fail open: any storage failure (connection, timeout, protocol) lets requests in
            self._paused_until = time.monotonic() + OUTAGE_PAUSE
            log.warning(
                "rate limits off for %.0f s: their counters in Redis cannot be reached (%r)", OUTAGE_PAUSE, error
            )
            return None
        self._paused_until = 0.0
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def close(self) -> None:
        if self.shared:
            connection = getattr(getattr(self.storage, "bridge", None), "storage", None)
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.aclose()


def _throttled(what: str, limit: int, retry_after: int) -> FhirError:
    message = f"too many requests from this {what} (at most {limit} a minute); retry in {retry_after} s"
    fault = FhirError(429, [Issue("error", "throttled", message)])
    fault.headers["Retry-After"] = str(retry_after)
    return fault


def client_address(scope: Scope, trusted: tuple[str, ...]) -> str:
    """The address of the client the request came from: the peer, or behind trusted proxies the
    hop they recorded (the same walk as rest/origin.py; headers from any other peer are ignored).
    Worked out once per request (the rate limit, then audit or the authorize log ask again)."""
    state = scope.setdefault("state", {})
    address = state.get("source_address")
    if address is None:
        address = state["source_address"] = _client_address(scope, trusted)
    return address


def _client_address(scope: Scope, trusted: tuple[str, ...]) -> str:
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    if not is_trusted(peer, trusted):
        return peer
    forwarded = forwarded_for = None
    for name, value in scope["headers"]:
        if name == b"forwarded":
            forwarded = value if forwarded is None else forwarded + b"," + value
        elif name == b"x-forwarded-for":
            forwarded_for = value if forwarded_for is None else forwarded_for + b"," + value
    nodes: list[str | None]
    if forwarded is not None:
        try:
            nodes = [e.for_ for e in parse_forwarded(forwarded.decode("latin-1"))]
        except ValueError:
            return peer  # the endpoint answers 400 for it
    elif forwarded_for is not None:
        nodes = [n.strip() for n in forwarded_for.decode("latin-1").split(",")]
    else:
        return peer
    if not nodes:
        return peer
    return node_address(nodes[client_hop(nodes, trusted)]) or peer


class AddressRateLimit:
    """ASGI middleware: the per-address limit on the paths under the given prefixes."""

    def __init__(self, app: ASGIApp, limits: RateLimits, prefixes: tuple[str, ...], trusted: tuple[str, ...]) -> None:
        self.app = app
        self.limits = limits
        self.prefixes = tuple(p.rstrip("/") for p in prefixes)
        self.trusted = trusted

    def _limited(self, path: str) -> bool:
        for prefix in self.prefixes:
            if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._limited(scope["path"]):
            wait = await self.limits.hit("address", client_address(scope, self.trusted))
            if wait is not None:
                await _refusal(scope["path"], _throttled("address", self.limits.item.amount, wait))(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)


def _refusal(path: str, fault: FhirError) -> Response:
    if path.startswith("/oauth"):  # the OAuth endpoints answer in RFC 6749 §5.2 JSON
        body = {"error": "temporarily_unavailable", "error_description": fault.issues[0].diagnostics}
        return Response(fhir_json.dumps(body), 429, fault.headers, media_type="application/json")
    return Response(
        fhir_json.dumps(operation_outcome(fault.issues)),
        429,
        fault.headers,
        media_type="application/fhir+json;charset=utf-8",
    )


def limit_clients(authenticate: Authenticator, limits: RateLimits) -> Authenticator:
    """The authenticator, then the per-client limit on the principal it found."""

    async def authenticate_and_count(request: Request, audience: str) -> Principal:
        principal = await authenticate(request, audience)
        if principal.client_id:
            wait = await limits.hit("client", principal.client_id)
            if wait is not None:
                raise _throttled("client", limits.item.amount, wait)
        return principal

    return authenticate_and_count
