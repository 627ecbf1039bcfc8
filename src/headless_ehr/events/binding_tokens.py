"""WebSocket binding tokens (`$get-ws-binding-token`, `bind-with-token`; Subscriptions
Backport IG 1.1): short-lived, for named subscriptions, carrying the rights of the
caller that asked for one.

A binding token is a JWT signed with the server's token keys (auth/keys.py: every node
verifies it) but typed `ws-binding+jwt`, so it is never taken as an access token (those
are `at+jwt`) and an access token is never taken as a binding token. It holds the
asking token's claims as a Subscription's owner is kept (events/owner.py: scope,
launch context, user, purposes of use, an external issuer's name), and its jti and
expiry: a socket bound with it acts with those rights, the subject's current access
policy applied (auth/policies.py), and ends when the asking token expires or is revoked.
A binding token binds once: its jti is kept (migration 0024) until it expires, so a token
seen by someone else (a log, a proxy) cannot open a second socket.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
from joserfc import jwt
from joserfc.errors import JoseError

from ..auth.keys import SigningKeys
from ..auth.policies import Policies
from ..auth.principal import Principal
from ..auth.tokens import AccessTokens
from ..fhir.outcome import FhirError
from .owner import owner_claims, owner_principal

TYP = "ws-binding+jwt"
LIFETIME = 120  # seconds a binding token may be used to bind (the socket then lives as long as the asking token)
MAX_SUBSCRIPTIONS = 16  # subscriptions one token names (also a socket's bound at most: events/websocket.py)
SKEW = 5  # seconds of clock difference between the nodes tolerated on expiry


class InvalidBindingToken(Exception):
    """The binding token cannot be used; the message says why."""


@dataclass(frozen=True)
class BindingGrant:
    """What a verified binding token allows: these subscriptions, with this principal's rights."""

    principal: Principal
    subscriptions: tuple[str, ...]


def _claims_of(principal: Principal) -> dict[str, Any]:
    """The asking principal as a Subscription owner's claims (events/owner.py), with its token's id and expiry."""
    claims = owner_claims(principal)
    if principal.token_id is not None:
        claims["token_jti"] = principal.token_id
    if principal.expires_at is not None:
        claims["token_exp"] = principal.expires_at
    return claims


def _principal_of(claims: dict[str, Any]) -> Principal:
    principal = owner_principal(claims)
    if principal.grants is None:
        return principal  # the server's own (EHR_AUTH=off)
    jti, exp = claims.get("token_jti"), claims.get("token_exp")
    return replace(
        principal,
        token_id=jti if isinstance(jti, str) else None,
        expires_at=exp if isinstance(exp, int) else None,
    )


class BindingTokens:
    """Issue and verify binding tokens with the server's signing keys."""

    def __init__(
        self, keys: SigningKeys, tokens: AccessTokens, policies: Policies, db: asyncpg.Pool, lifetime: int = LIFETIME
    ) -> None:
        self.keys = keys
        self.tokens = tokens
        self.policies = policies
        self.db = db  # the events workers' pool: its writes do not hold the write watermark back
        self.lifetime = lifetime

    def issue(self, principal: Principal, subscriptions: list[str], audience: str) -> tuple[str, int]:
        """A binding token for the subscriptions (ids), and when it expires (epoch seconds):
        within LIFETIME and never after the asking token."""
        assert self.keys.signing is not None, "signing keys not loaded"
        assert 0 < len(subscriptions) <= MAX_SUBSCRIPTIONS
        now = int(time.time())
        expires = now + self.lifetime
        if principal.expires_at is not None:
            expires = min(expires, principal.expires_at)
        claims = {
            **_claims_of(principal),
            "aud": audience,
            "iat": now,
            "exp": expires,
            "jti": uuid.uuid4().hex,
            "subscription": list(subscriptions),
        }
        header = {"alg": "ES256", "kid": self.keys.signing.kid, "typ": TYP}
        return jwt.encode(header, claims, self.keys.signing, algorithms=["ES256"]), expires

    async def verify(self, token: str, audience: str) -> BindingGrant:
        """The grant of a binding token issued here for `audience` (this FHIR base), unexpired,
        whose asking token is not revoked, with the subject's current access policy; else
        InvalidBindingToken."""
        if len(token) > 16384:
            raise InvalidBindingToken("the binding token is too long")
        try:
            decoded = jwt.decode(token, self.keys.keyset, algorithms=["ES256"])
        except (JoseError, ValueError, TypeError, KeyError):
            raise InvalidBindingToken("the binding token is not one this server signed") from None
        if decoded.header.get("typ") != TYP:
            raise InvalidBindingToken("the token is not a binding token (from $get-ws-binding-token)")
        claims = decoded.claims
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= time.time() - SKEW:
            raise InvalidBindingToken("the binding token has expired")
        if claims.get("aud") != audience:
            raise InvalidBindingToken("the binding token was issued for another server")
        subscriptions = claims.get("subscription")
        if not isinstance(subscriptions, list) or not all(isinstance(s, str) for s in subscriptions):
            raise InvalidBindingToken("the binding token names no subscriptions")
        asking = claims.get("token_jti")
        if isinstance(asking, str) and self.tokens.is_revoked(asking):
            raise InvalidBindingToken("the access token this binding token was issued to has been revoked")
        if not isinstance(claims.get("jti"), str) or not await self._first_use(claims["jti"], exp):
            raise InvalidBindingToken("the binding token has been used already: ask for a new one")
        try:
            principal = await self.policies.apply(token, _principal_of(claims))
        except FhirError as error:  # e.g. break-the-glass no longer allowed by the subject's policy
            raise InvalidBindingToken(str(error)) from None
        return BindingGrant(principal, tuple(subscriptions[:MAX_SUBSCRIPTIONS]))

    async def _first_use(self, jti: str, expires: int) -> bool:
        """Record the token's use; False when it was used before (on any node)."""
        async with self.db.acquire() as conn:
            first = await conn.fetchval(_USE, jti[:64], float(expires + SKEW))
            await conn.execute(_FORGET)
        return bool(first)


_USE = (
    "INSERT INTO ws_binding_token_use (jti, expires_at) VALUES ($1, to_timestamp($2))"
    " ON CONFLICT (jti) DO NOTHING RETURNING true"
)
_FORGET = "DELETE FROM ws_binding_token_use WHERE expires_at < now() - interval '1 minute'"
