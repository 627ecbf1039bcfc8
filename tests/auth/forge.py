"""Tokens and client assertions made by the tests themselves: an attacker's forgeries, or a
backend service's signed assertions, and the registration of such a service."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from headless_ehr.auth import accounts

from .oauth_support import FHIR, TOKEN_URL, http, unique

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def b64(value: Any) -> str:
    """A JWT part: bytes, or a value as JSON, base64url without padding."""
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def access_claims(**changes: Any) -> dict[str, Any]:
    """The claims of an access token of this server for `mallory`; a change to None leaves a claim out."""
    now = int(time.time())
    claims = {
        "iss": "http://testserver",
        "aud": FHIR,
        "sub": "mallory",
        "client_id": "mallory",
        "scope": "system/*.*",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    } | changes
    return {k: v for k, v in claims.items() if v is not None}


def signed(app: Any, claims: dict[str, Any], kid: str | None = None, typ: str = "at+jwt") -> str:
    """Claims signed with the app's own signing key (as only the server should)."""
    key = app.state.signing_keys.signing
    return jwt.encode({"alg": "ES256", "kid": kid or key.kid, "typ": typ}, claims, key, algorithms=["ES256"])


def client_key(alg: str) -> Any:
    """A backend service's private key: RS384 or ES384."""
    kid = uuid.uuid4().hex
    if alg == "RS384":
        return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": alg})
    return ECKey.generate_key("P-384", parameters={"kid": kid, "alg": alg})


def client_assertion(key: Any, alg: str, client_id: str, **changes: Any) -> str:
    """A client assertion (private_key_jwt) for the token endpoint; a change to None leaves a claim out."""
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": now + 240, "jti": uuid.uuid4().hex} | changes
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


async def assertion_token(app: Any, assertion: str, scope: str = "system/*.rs", **extra: str) -> httpx.Response:
    """The token endpoint's answer to client_credentials with this assertion."""
    form = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    } | extra
    async with http(app) as c:
        return await c.post("/oauth/token", data=form)


async def key_client(db: Any, key: Any, **registration: Any) -> str:
    """A backend service registered with the key's public JWKS (or the given registration)."""
    if not registration:
        registration = {"jwks": {"keys": [key.as_dict(private=False)]}}
    client, secret = await accounts.create_client(db, unique("svc"), scopes=["system/*.rs"], **registration)
    assert secret is None
    return client.client_id
