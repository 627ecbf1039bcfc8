"""Access tokens: short-lived ES256 JWTs, issued and verified here only.

Verifying a signature costs more than serving a read, so a verified token is cached
(by its exact bytes) until it expires; a revocation empties its entry at once on this
node and, through auth_revoked_token, on every other node within a second.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from joserfc import jwt
from joserfc.errors import JoseError

from ..db.periodic import Periodic
from .keys import MAX_TOKEN_LIFETIME, SigningKeys
from .principal import Principal
from .scopes import ScopeError

log = logging.getLogger("headless_ehr.auth")

CACHE_SIZE = 50_000  # verified tokens remembered per node
LEEWAY = 30  # seconds of clock skew tolerated on exp/nbf/iat
REVOCATION_POLL_SECONDS = 1.0
PRUNE_SECONDS = 300  # how often expired revocations are forgotten (memory and table)


class InvalidToken(Exception):
    """The bearer token cannot be used (RFC 6750 error="invalid_token"); the message says why."""


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    jti: str


class AccessTokens:
    """Issue and verify this server's access tokens."""

    def __init__(self, pool: asyncpg.Pool, keys: SigningKeys, lifetime: int) -> None:
        self.pool = pool
        self.keys = keys
        self.lifetime = min(lifetime, MAX_TOKEN_LIFETIME)
        self._cache: OrderedDict[str, tuple[Principal, str]] = OrderedDict()
        self._revoked: dict[str, float] = {}  # jti -> its exp: forgotten once it could not verify anyway
        self._pruned = time.monotonic()
        self._revoked_since: datetime | None = None
        self._poller = Periodic(REVOCATION_POLL_SECONDS, self._load_revocations, log, "could not read revoked tokens")

    async def start(self) -> None:
        await self._poller.start()

    async def close(self) -> None:
        await self._poller.close()

    def issue(
        self,
        *,
        issuer: str,
        audience: str,
        subject: str,
        client_id: str,
        scope: str,
        lifetime: int | None = None,
        **context: Any,
    ) -> IssuedToken:
        """A signed access token. context: patient, encounter, fhirUser, roles, purpose_of_use
        (None values left out)."""
        assert self.keys.signing is not None, "signing keys not loaded"
        now = int(time.time())
        expires_in = min(lifetime or self.lifetime, MAX_TOKEN_LIFETIME)
        jti = uuid.uuid4().hex
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "nbf": now,
            "exp": now + expires_in,
            "jti": jti,
        }
        claims.update({k: v for k, v in context.items() if v is not None})
        header = {"alg": "ES256", "kid": self.keys.signing.kid, "typ": "at+jwt"}
        return IssuedToken(jwt.encode(header, claims, self.keys.signing, algorithms=["ES256"]), expires_in, jti)

    def decode(self, token: str, audience: str, base_path: str = "/fhir") -> dict[str, Any]:
        """The claims of a token this server signed for `audience`, still valid; else InvalidToken."""
        try:
            decoded = jwt.decode(token, self.keys.keyset, algorithms=["ES256"])
        except (JoseError, ValueError, TypeError, KeyError) as error:
            raise InvalidToken(f"the token is not one this server signed ({type(error).__name__})") from None
        typ = decoded.header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ("at+jwt", "application/at+jwt"):
            # RFC 9068 §4: nothing else we sign (ID tokens) may pass as an access token
            raise InvalidToken("the token is not an access token (typ at+jwt)")
        claims = decoded.claims
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        if not isinstance(exp, int | float) or exp < now - LEEWAY:
            raise InvalidToken("the token has expired")
        if isinstance(nbf, int | float) and nbf > now + LEEWAY:
            raise InvalidToken("the token is not valid yet")
        if claims.get("iss") != issuer_of(audience, base_path):
            raise InvalidToken("the token was issued by another issuer")
        aud = claims.get("aud")
        if (aud if isinstance(aud, list) else [aud]).count(audience) == 0:
            raise InvalidToken("the token was issued for another audience")
        if not isinstance(claims.get("jti"), str) or not isinstance(claims.get("scope", ""), str):
            raise InvalidToken("the token lacks jti or scope")
        if claims["jti"] in self._revoked:
            raise InvalidToken("the token has been revoked")
        return claims

    def verify(self, token: str, audience: str, base_path: str = "/fhir") -> Principal:
        """The principal a bearer token stands for; InvalidToken when it cannot be used."""
        hit = self._cache.get(token)
        if hit is not None and hit[1] == audience:
            principal = hit[0]
            alive = principal.expires_at is not None and principal.expires_at >= time.time() - LEEWAY
            if alive and principal.token_id not in self._revoked:
                return principal
            del self._cache[token]
        try:
            principal = principal_of(self.decode(token, audience, base_path))
        except ScopeError as error:  # a scope this server no longer accepts
            raise InvalidToken(f"the token's scope is not usable: {error}") from None
        self._cache[token] = (principal, audience)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal

    async def revoke(self, jti: str, expires_at: float) -> None:
        """Refuse this token from now on, on every node."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO auth_revoked_token (jti, expires_at) VALUES ($1, to_timestamp($2)) ON CONFLICT DO NOTHING",
                jti,
                expires_at,
            )
        self._revoked[jti] = expires_at

    def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked

    async def _load_revocations(self) -> None:
        async with self.pool.acquire() as conn:
            if self._revoked_since is None or time.monotonic() - self._pruned > PRUNE_SECONDS:
                await conn.execute("DELETE FROM auth_revoked_token WHERE expires_at < now() - interval '5 minutes'")
                self._prune()
            since = self._revoked_since or datetime.fromtimestamp(0).astimezone()
            # a revocation committing late still shows: re-read a margin behind the newest seen
            rows = await conn.fetch(
                "SELECT jti, revoked_at, extract(epoch FROM expires_at)::float8 AS exp FROM auth_revoked_token"
                " WHERE revoked_at > $1::timestamptz - interval '10 seconds'",
                since,
            )
        for row in rows:
            self._revoked[row["jti"]] = row["exp"]
            if self._revoked_since is None or row["revoked_at"] > self._revoked_since:
                self._revoked_since = row["revoked_at"]
        if self._revoked_since is None:
            self._revoked_since = datetime.now().astimezone() - timedelta(seconds=1)

    def _prune(self) -> None:
        """Forget revocations of tokens that have expired (decode refuses those by exp)."""
        self._pruned = time.monotonic()
        horizon = time.time() - LEEWAY - 60
        self._revoked = {jti: exp for jti, exp in self._revoked.items() if exp >= horizon}


def issuer_of(audience: str, base_path: str = "/fhir") -> str:
    """This server's issuer for a FHIR base: the base without the FHIR base path (e.g.
    https://host/api for https://host/api/fhir), where /oauth/… and
    /.well-known/openid-configuration are served; the origin when the base does not
    end in the base path (EHR_PUBLIC_BASE_URL with another path)."""
    suffix = base_path.rstrip("/")
    if suffix and audience.endswith(suffix):
        return audience[: -len(suffix)]
    parts = urlsplit(audience)
    return f"{parts.scheme}://{parts.netloc}"


def principal_of(claims: dict[str, Any]) -> Principal:
    """The Principal of a verified token's claims."""
    roles = claims.get("roles") or ()
    purposes = claims.get("purpose_of_use") or ()
    return Principal.from_scopes(
        str(claims.get("sub") or claims.get("client_id") or ""),
        str(claims.get("scope") or ""),
        client_id=claims.get("client_id"),
        fhir_user=claims.get("fhirUser"),
        patient=claims.get("patient"),
        encounter=claims.get("encounter"),
        roles=tuple(roles) if isinstance(roles, list) else (),
        purpose_of_use=tuple(p for p in purposes if isinstance(p, str)) if isinstance(purposes, list) else (),
        token_id=claims.get("jti"),
        expires_at=int(claims["exp"]),
    )
