"""One webhook request, signed per Standard Webhooks (https://www.standardwebhooks.com/).

Headers: `webhook-id` (stable across retries: consumers dedupe on it), `webhook-timestamp`
(this attempt, in seconds) and, when the subscription has a secret (`whsec_` + base64
key), `webhook-signature`: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, made by
the `standardwebhooks` library. The subscription's own `channel.header` lines are sent
too, but never in place of ours (webhook-*, Content-Type, Host, ...).

Each node has one `WebhookSender`: one HTTP client with bounded connections and
timeouts; redirects are not followed (a 3xx is a failed delivery); an answer's body is
read only up to a small bound, so an endpoint cannot make us hold megabytes.

Whoever may create a Subscription chooses where this server sends requests, so no
request goes to an address in EHR_WEBHOOK_BLOCKED_NETWORKS (by default loopback,
link-local with the cloud metadata services, unspecified and multicast): checked on the
addresses the connection is made to, after DNS, so a name that resolves (or is made to
resolve, DNS rebinding) to such an address is refused too. Private networks (10/8,
172.16/12, 192.168/16, fc00::/7) are allowed by default: internal services are the usual
subscribers of a headless EHR.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
from standardwebhooks import Webhook

FHIR_JSON = "application/fhir+json"
SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64  # a signing key's length
MAX_ANSWER_BYTES = 4096  # what we read of an endpoint's answer (then the connection is dropped)
# headers a subscription's channel.header may not set: ours, and the transport's
RESERVED_HEADERS = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "host",
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "expect",
    }
)
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class HeaderError(ValueError):
    """A channel.header line we will not send."""


def parse_header(line: str) -> tuple[str, str]:
    """One `channel.header` line (`Name: value`) as (name, value); HeaderError when it is
    malformed (no colon, not an RFC 9110 token, a control character) or names a header
    this server sets itself (or the transport does). The one rule for Subscription
    validation at create (events/subscription.py) and for what is sent."""
    name, colon, value = line.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not name or not set(name) <= _TOKEN_CHARS:
        raise HeaderError(f"channel.header '{line[:100]}' is not 'Name: value'")
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
        raise HeaderError(f"channel.header '{name}' holds a control character")
    if name.lower() in RESERVED_HEADERS:
        raise HeaderError(f"channel.header may not set '{name}': the server sets it")
    return name, value


def check_secret(secret: str) -> None:
    """ValueError unless secret is `whsec_` + strict base64 of MIN_KEY_BYTES to MAX_KEY_BYTES
    (Standard Webhooks' range); the one rule for Subscription validation at create."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"the webhook secret must start with '{SECRET_PREFIX}'")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        raise ValueError("the webhook secret must be 'whsec_' followed by a base64 key") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(
            f"the webhook secret's key (after 'whsec_') must hold {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes"
        )


def check_endpoint(url: str) -> None:
    """ValueError unless url is one this sender can request: http or https, a host, a port
    in range, no credentials in it (they belong in channel.header). For validation at create."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range or not a number
    except ValueError as error:
        raise ValueError(f"the endpoint is not a valid URL ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("a rest-hook endpoint must be an http or https URL")
    if parts.username or parts.password:
        raise ValueError("a rest-hook endpoint may not hold credentials (use channel.header)")


@functools.lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    """One signer per secret (decoding the key each time cost as much as the signing)."""
    return Webhook(secret)


def signature_headers(message_id: str, body: bytes, secret: str | None, at: datetime | None = None) -> dict[str, str]:
    """webhook-id, webhook-timestamp and (with a secret) webhook-signature for body."""
    at = at or datetime.now(UTC)
    headers = {"webhook-id": message_id, "webhook-timestamp": str(int(at.timestamp()))}
    if secret:
        headers["webhook-signature"] = _signer(secret).sign(message_id, at, body.decode())
    return headers


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """Parsed CIDRs; ValueError for a malformed one (a setting stops start-up)."""
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip())


def blocked(address: str, blocked_networks: tuple[Network, ...]) -> bool:
    """Whether an IP address (IPv4-mapped IPv6 read as its IPv4) lies in a blocked network."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False  # not an IP literal: a name, judged on what it resolves to
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in blocked_networks)


class _GuardedResolver(aiohttp.ThreadedResolver):
    """DNS answers without the blocked addresses; none left: the connection fails."""

    def __init__(self, blocked_networks: tuple[Network, ...]) -> None:
        super().__init__()
        self._blocked = blocked_networks

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list:  # type: ignore[override]
        answers = await super().resolve(host, port, family)
        allowed = [a for a in answers if not blocked(a["host"], self._blocked)]
        if not allowed:
            raise OSError(f"{host} resolves to a blocked network only (EHR_WEBHOOK_BLOCKED_NETWORKS)")
        return allowed


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one request got: the HTTP status (None: no answer), its latency, and why it
    failed; permanent: retrying cannot help (a blocked address), the subscription errs now."""

    status: int | None
    latency_ms: float
    error: str | None = None
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookSender:
    """The node's HTTP client for webhooks: one aiohttp session (per request about a sixth
    of httpx's CPU, measured: 0.07 against 0.42 ms on loopback; a subscription's requests go
    one after another, so this bounds how many events a node delivers a second)."""

    def __init__(
        self, timeout_seconds: float = 10.0, max_connections: int = 64, blocked_networks: Iterable[str] = ()
    ) -> None:
        self.timeout = timeout_seconds
        self._blocked = networks(blocked_networks)
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_seconds * 1.5, connect=min(timeout_seconds, 5.0), sock_read=timeout_seconds
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on the running loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    limit_per_host=self._max_connections,
                    resolver=_GuardedResolver(self._blocked),
                ),
                timeout=self._timeout,
                headers={"User-Agent": "headless-ehr"},
                skip_auto_headers=("Accept-Encoding",),
                auto_decompress=False,
                trust_env=False,  # no proxy or .netrc from the server's environment
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        message_id: str,
        *,
        secret: str | None = None,
        channel_headers: Sequence[str] = (),
        content_type: str = FHIR_JSON,
    ) -> Attempt:
        """One signed request; never raises for what the endpoint does (refused, timed
        out, 5xx): the Attempt says. The whole exchange is bounded by 1.5 x the timeout
        (an endpoint trickling its answer cannot hold a delivery for ever)."""
        headers: dict[str, str] = {}
        for line in channel_headers:
            try:
                name, value = parse_header(line)
            except HeaderError:
                continue  # refused at create; one stored before that rule is left out
            headers[name] = value
        headers.update(signature_headers(message_id, body or b"", secret))
        if body is not None:
            headers["Content-Type"] = content_type
        started = time.perf_counter()
        host = urlsplit(url).hostname or ""
        if blocked(host, self._blocked) or (self._blocked and host.rstrip(".").lower() == "localhost"):
            why = f"the endpoint's host {host} is in a blocked network (EHR_WEBHOOK_BLOCKED_NETWORKS)"
            return Attempt(None, 0.0, why, permanent=True)
        try:
            async with self._client().request(
                method,
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                skip_auto_headers=("Content-Type",) if body is None else (),  # no body, no type
            ) as response:
                await response.content.read(MAX_ANSWER_BYTES)  # the rest is not ours to hold: not reused
                status = response.status
        except TimeoutError:
            return Attempt(None, _since(started), "timed out")
        except (aiohttp.ClientError, OSError, ValueError) as error:
            text = f"{type(error).__name__}: {str(error)[:200]}".rstrip(": ")
            return Attempt(None, _since(started), text, permanent="EHR_WEBHOOK_BLOCKED_NETWORKS" in text)
        return Attempt(status, _since(started), None if 200 <= status < 300 else f"HTTP {status}")


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
