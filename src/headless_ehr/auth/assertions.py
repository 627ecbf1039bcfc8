"""Client assertions (RFC 7523, SMART Backend Services): a client proves itself with a
JWT signed by one of its registered keys (RS384 or ES384), iss = sub = client_id, aud =
our token endpoint, a unique jti and an exp at most five minutes ahead.

Keys come from the client's registered JWKS or its jwks_uri, fetched with a bounded
timeout and size and cached for a few minutes (fetched again, at most every 10 s, when
an assertion names a kid the cache lacks, so a client can rotate its keys).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import Any

import httpx
import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from . import grants
from .accounts import AccountError, Client, Db, check_jwks, get_client

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384")
MAX_AHEAD = 300  # seconds: the furthest exp a client assertion may have
LEEWAY = 30  # clock skew tolerated on exp, nbf and iat
JWKS_TIMEOUT = 5.0
JWKS_MAX_BYTES = 64 * 1024
JWKS_TTL = 300  # seconds a fetched JWKS is trusted
JWKS_REFETCH = 10  # seconds between fetches of the same URL on an unknown kid


class BadAssertion(Exception):
    """The assertion does not authenticate a client (invalid_client); the message says why."""


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, read without checking the signature (to find the client)."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 16384:
        raise BadAssertion("client_assertion is not a compact JWT")
    try:
        header, claims = (orjson.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in parts[:2])
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise BadAssertion("client_assertion is not a compact JWT") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise BadAssertion("client_assertion is not a compact JWT")
    return header, claims


class JwksCache:
    """Fetched JWK Sets of clients' jwks_uri, per node. A URL is asked at most once every
    JWKS_REFETCH seconds, whether the last answer was keys or a failure, so that callers
    who need not authenticate cannot make this server flood a client's host."""

    def __init__(self) -> None:
        self._sets: dict[str, tuple[float, KeySet]] = {}
        self._fetched: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def keys(self, uri: str, kid: str | None) -> KeySet:
        async with self._locks.setdefault(uri, asyncio.Lock()):  # concurrent assertions share one fetch
            now = time.monotonic()
            cached = self._sets.get(uri)
            fresh = cached is not None and now - cached[0] < JWKS_TTL
            known = cached is not None and (kid is None or any(k.kid == kid for k in cached[1].keys))
            if cached is not None and fresh and known:
                return cached[1]
            if now - self._fetched.get(uri, -JWKS_REFETCH) < JWKS_REFETCH:
                if cached is not None and fresh:
                    return cached[1]
                raise BadAssertion("the client's jwks_uri could not be fetched a moment ago; try again shortly")
            self._fetched[uri] = now
            keyset = await fetch_jwks(uri)
            self._sets[uri] = (now, keyset)
            return keyset


async def fetch_jwks(uri: str) -> KeySet:
    try:
        async with (
            asyncio.timeout(2 * JWKS_TIMEOUT),  # all in: a server dripping bytes cannot hold us longer
            httpx.AsyncClient(timeout=JWKS_TIMEOUT, follow_redirects=False) as http,
            http.stream("GET", uri, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise BadAssertion(f"the client's jwks_uri answered {response.status_code}")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > JWKS_MAX_BYTES:
                    raise BadAssertion("the client's jwks_uri answered more than 64 KiB")
    except (httpx.HTTPError, TimeoutError) as error:
        raise BadAssertion(f"the client's jwks_uri could not be fetched ({type(error).__name__})") from None
    try:
        return KeySet.import_key_set(check_jwks(orjson.loads(body)))  # type: ignore[arg-type]
    except (orjson.JSONDecodeError, AccountError) as error:
        raise BadAssertion(f"the client's jwks_uri holds no usable JWK Set ({error})") from None


async def authenticate_assertion(db: Db, cache: JwksCache, assertion: str, token_endpoint: str) -> Client:
    """The enabled asymmetric client a client assertion proves; BadAssertion otherwise."""
    header, unverified = _unverified(assertion)
    client_id = unverified.get("iss")
    if not isinstance(client_id, str) or not client_id or "\x00" in client_id:
        raise BadAssertion("the assertion has no iss")
    client = await get_client(db, client_id)
    if client is None or not client.enabled or not client.asymmetric:
        raise BadAssertion("no enabled client with registered keys has this iss")
    if header.get("alg") not in ALGORITHMS:
        raise BadAssertion(f"client assertions must be signed with {' or '.join(ALGORITHMS)}")
    kid = header.get("kid") if isinstance(header.get("kid"), str) else None
    if client.jwks is not None:
        keyset = KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]
    else:
        assert client.jwks_uri is not None
        keyset = await cache.keys(client.jwks_uri, kid)
    try:
        claims = jwt.decode(assertion, keyset, algorithms=list(ALGORITHMS)).claims
    except (JoseError, ValueError, TypeError, KeyError) as error:
        raise BadAssertion(f"the assertion's signature does not verify ({type(error).__name__})") from None
    now = time.time()
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise BadAssertion("the assertion's iss and sub must both be the client_id")
    aud = claims.get("aud")
    if token_endpoint not in (aud if isinstance(aud, list) else [aud]):
        raise BadAssertion(f"the assertion's aud must be the token endpoint {token_endpoint}")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise BadAssertion("the assertion has no exp")
    if exp < now - LEEWAY:
        raise BadAssertion("the assertion has expired")
    if exp > now + MAX_AHEAD + LEEWAY:
        raise BadAssertion("the assertion's exp may be at most five minutes ahead")
    for claim in ("nbf", "iat"):
        value = claims.get(claim)
        if isinstance(value, int | float) and value > now + LEEWAY:
            raise BadAssertion(f"the assertion's {claim} lies in the future")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 256 or "\x00" in jti:
        raise BadAssertion("the assertion has no jti")
    if not await grants.record_assertion(db, client_id, jti, float(exp)):
        raise BadAssertion("the assertion's jti has been used before")
    return client
