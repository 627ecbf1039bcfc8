"""Access tokens of an external OpenID Connect issuer (EHR_TRUSTED_ISSUER): Keycloak, Auth0, Entra ID, ….

A token whose (unverified) `iss` is the trusted issuer is verified with that issuer's
keys, found through its discovery document (`<issuer>/.well-known/openid-configuration`,
`jwks_uri`) and kept in memory. A token signed with a key not yet seen makes the keys be
fetched again, at most once a minute, so made-up `kid`s cannot turn this server into a
flood against the issuer. Only RS256, RS384, ES256 and ES384 signatures count (never
`none`, never a shared secret), `aud` must name EHR_TRUSTED_AUDIENCE, `exp` must lie ahead.

The claims become a Principal (`principal_from_claims`, mapping documented in
docs/security.md); a verified token is remembered until it expires, as this server's own are.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections import OrderedDict
from typing import Any

import httpx
import orjson
from joserfc import jwk, jwt
from joserfc.errors import JoseError

from ..fhir.definitions import definitions
from .principal import Principal
from .scopes import MAX_SCOPES, ScopeError, parse_grant
from .tokens import LEEWAY, InvalidToken

log = logging.getLogger("headless_ehr.auth")

ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")
FETCH_TIMEOUT = 5.0  # seconds for one discovery or JWKS fetch, all in
MAX_DOCUMENT_BYTES = 512 * 1024  # a larger discovery document or JWKS is refused
REFETCH_SECONDS = 60.0  # an unknown kid fetches the keys again at most this often
RETRY_SECONDS = 5.0  # after a failed fetch, the next attempt waits this long
CACHE_SIZE = 50_000  # verified tokens remembered
MAX_TOKEN_BYTES = 16384

# Entra ID allows no `/` in scope names, so SMART scopes are registered as `patient.Observation.read`
# (`all` for `*`), as Azure Health Data Services does; they are read as `patient/Observation.read`.
_DOTTED_SCOPE = re.compile(r"(patient|user|system)\.(all|\*|[A-Z][A-Za-z]{0,63})\.(read|write|\*|all|c?r?u?d?s?)")
_REFERENCE_TAIL = re.compile(r"(?:^|/)([A-Z][A-Za-z]{0,63})/([A-Za-z0-9\-.]{1,64})$")


class FetchError(Exception):
    """The issuer's discovery document or keys could not be read."""


def _segment(token: str, index: int) -> dict[str, Any] | None:
    """One JSON segment (0 header, 1 payload) of a compact JWS, unverified; None if it is not one."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > MAX_TOKEN_BYTES:
        return None
    raw = parts[index]
    try:
        value = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def unverified_issuer(token: str) -> str | None:
    """The `iss` a token claims, before anything is verified: only to choose who verifies it."""
    payload = _segment(token, 1)
    issuer = payload.get("iss") if payload else None
    return issuer if isinstance(issuer, str) else None


def _strings(value: object) -> list[str]:
    """A claim holding a space-separated string or a list of strings, as a list."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def smart_scope(scope: str) -> str:
    """A scope in SMART form; Entra ID's dotted `patient.Observation.read` becomes `patient/Observation.read`."""
    m = _DOTTED_SCOPE.fullmatch(scope)
    if m is None:
        return scope
    context, rtype, access = m.groups()
    return f"{context}/{'*' if rtype in ('all', '*') else rtype}.{'*' if access == 'all' else access}"


def fhir_reference(value: object) -> str | None:
    """`Practitioner/7` from `Practitioner/7` or a URL ending in it (`https://ehr.example.org/fhir/Practitioner/7`)."""
    if not isinstance(value, str):
        return None
    m = _REFERENCE_TAIL.search(value)
    if m is None or m.group(1) not in definitions().resource_types:
        return value  # kept as sent: it then names no resource of this server
    return f"{m.group(1)}/{m.group(2)}"


def principal_from_claims(claims: dict[str, Any], fhir_user_claim: str = "fhirUser") -> Principal:
    """The Principal of a verified external token.

    scopes: `scope` (space-separated, OAuth 2 / Keycloak / Auth0) and `scp` (a list, Okta; a
    space-separated string, Entra ID), resource scopes that do not parse are dropped;
    roles: `roles` (Entra ID app roles, or a custom claim), `realm_access.roles` (Keycloak), `groups`;
    client: `client_id` (RFC 9068), `azp` (Keycloak, Auth0, Entra v2), `appid` (Entra v1).
    """
    scopes: list[str] = []
    for raw in dict.fromkeys(_strings(claims.get("scope")) + _strings(claims.get("scp"))):
        scope = smart_scope(raw)
        try:
            parse_grant(scope)
        except ScopeError:
            continue  # e.g. a custom `user/profile.edit`: not a SMART resource scope, no rights
        scopes.append(scope)
    realm = claims.get("realm_access")
    roles = _strings(claims.get("roles")) + _strings(realm.get("roles") if isinstance(realm, dict) else None)
    roles += _strings(claims.get("groups"))
    client_id = next((v for k in ("client_id", "azp", "appid") if isinstance(v := claims.get(k), str)), None)
    subject = claims.get("sub") if isinstance(claims.get("sub"), str) else client_id
    patient, encounter, jti = claims.get("patient"), claims.get("encounter"), claims.get("jti")
    return Principal.from_scopes(
        subject or "",
        " ".join(scopes[:MAX_SCOPES]),
        client_id=client_id,
        fhir_user=fhir_reference(claims.get(fhir_user_claim)),
        patient=patient if isinstance(patient, str) else None,
        encounter=encounter if isinstance(encounter, str) else None,
        roles=tuple(dict.fromkeys(roles)),
        token_id=jti if isinstance(jti, str) else None,
        expires_at=int(claims["exp"]),
        attributes={"issuer": str(claims.get("iss"))},  # not one of this server's clients, whatever its client_id
    )


class TrustedIssuer:
    """Verifies access tokens of one external issuer with its published keys."""

    def __init__(
        self, issuer: str, audience: str, fhir_user_claim: str = "fhirUser", http: httpx.AsyncClient | None = None
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.fhir_user_claim = fhir_user_claim
        self.http = http or httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False)
        self._keys: dict[str | None, jwk.Key] | None = None
        self._jwks_uri: str | None = None
        self._fetched = 0.0  # monotonic time of the last successful fetch
        self._failed = float("-inf")  # and of the last failed one
        self._lock = asyncio.Lock()
        self._cache: OrderedDict[str, Principal] = OrderedDict()

    async def close(self) -> None:
        await self.http.aclose()

    def issued(self, token: str) -> bool:
        return unverified_issuer(token) == self.issuer

    def cached(self, token: str) -> Principal | None:
        principal = self._cache.get(token)
        if principal is None:
            return None
        if principal.expires_at is not None and principal.expires_at >= time.time() - LEEWAY:
            return principal
        del self._cache[token]
        return None

    async def verify(self, token: str) -> Principal:
        """The principal of a token this issuer signed for our audience; InvalidToken otherwise."""
        header = _segment(token, 0)
        if header is None:
            raise InvalidToken("the token is not a signed JWT")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise InvalidToken(f"tokens of the trusted issuer must be signed with one of {', '.join(ALGORITHMS)}")
        kid = header.get("kid")
        key = await self._key(kid if isinstance(kid, str) else None)
        try:
            claims = jwt.decode(token, key, algorithms=[alg]).claims
        except (JoseError, ValueError, TypeError, KeyError):
            raise InvalidToken("the token's signature does not verify with the trusted issuer's keys") from None
        self._check(claims)
        principal = principal_from_claims(claims, self.fhir_user_claim)
        self._cache[token] = principal
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal

    def _check(self, claims: dict[str, Any]) -> None:
        now = time.time()
        if claims.get("iss") != self.issuer:
            raise InvalidToken("the token names another issuer")
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float) or exp < now - LEEWAY:
            raise InvalidToken("the token has expired")
        if isinstance(nbf, int | float) and nbf > now + LEEWAY:
            raise InvalidToken("the token is not valid yet")
        if self.audience not in _strings(claims.get("aud")):
            raise InvalidToken("the token was issued for another audience")

    async def _key(self, kid: str | None) -> jwk.Key:
        key = self._lookup(kid)
        if key is not None:
            return key
        async with self._lock:  # one fetch at a time; the others then find its keys
            key = self._lookup(kid)
            if key is None and self._may_fetch():
                try:
                    await self._fetch()
                except FetchError as error:
                    self._failed, self._jwks_uri = time.monotonic(), None  # and discover afresh next time
                    log.warning("could not fetch the keys of the trusted issuer %s: %s", self.issuer, error)
                    raise InvalidToken("the trusted issuer's keys cannot be fetched now") from None
                key = self._lookup(kid)
        if key is None:
            raise InvalidToken("the token is signed with a key the trusted issuer does not publish")
        return key

    def _lookup(self, kid: str | None) -> jwk.Key | None:
        if self._keys is None:
            return None
        if kid is None and len(self._keys) == 1:  # a kid is needed only to choose among several keys
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _may_fetch(self) -> bool:
        now = time.monotonic()
        if now - self._failed < RETRY_SECONDS:
            return False
        return self._keys is None or now - self._fetched >= REFETCH_SECONDS

    async def _fetch(self) -> None:
        try:
            async with asyncio.timeout(2 * FETCH_TIMEOUT):
                if self._jwks_uri is None:
                    self._jwks_uri = await self._discover()
                document = await self._get_json(self._jwks_uri)
        except TimeoutError:
            raise FetchError("timed out") from None
        keys: dict[str | None, jwk.Key] = {}
        entries = document.get("keys")
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC") or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwk.import_key(entry)
            except (JoseError, ValueError, TypeError, KeyError):
                continue  # one malformed key does not spoil the others
            keys[entry.get("kid")] = key
        if not keys:
            raise FetchError(f"{self._jwks_uri} holds no RSA or EC signing keys")
        self._keys, self._fetched = keys, time.monotonic()

    async def _discover(self) -> str:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url)
        if document.get("issuer") != self.issuer:  # OpenID Connect Discovery 1.0 §4.3
            raise FetchError(f"{url} names issuer {str(document.get('issuer'))[:200]!r}, not {self.issuer!r}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise FetchError(f"{url} gives no jwks_uri")
        return jwks_uri

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self.http.stream("GET", url, headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise FetchError(f"{url} answered {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise FetchError(f"{url} is larger than {MAX_DOCUMENT_BYTES} bytes")
        except httpx.HTTPError as error:
            raise FetchError(f"{url}: {error!r}") from None
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FetchError(f"{url} is not JSON") from None
        if not isinstance(document, dict):
            raise FetchError(f"{url} is not a JSON object")
        return document
