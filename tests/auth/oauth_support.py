"""Helpers of the OAuth tests: HTTP clients of the app at its origin, registered clients and users."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from typing import Any

import httpx

from headless_ehr.auth import accounts

ORIGIN = "http://testserver"
FHIR = ORIGIN + "/fhir"
TOKEN_URL = ORIGIN + "/oauth/token"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def http(app: Any, **kwargs: Any) -> httpx.AsyncClient:
    """A client of the app at its origin (not the FHIR base), like a browser or an app."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN, **kwargs)


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def confidential_client(db: Any, scopes: list[str], redirect_uris: list[str] | None = None) -> tuple[str, str]:
    client, secret = await accounts.create_client(db, unique("app"), redirect_uris or [], scopes)
    assert secret is not None
    return client.client_id, secret


async def system_token(app: Any, db: Any, scope: str = "system/*.rs") -> str:
    client_id, secret = await confidential_client(db, [scope])
    async with http(app) as c:
        r = await c.post(
            "/oauth/token", data={"grant_type": "client_credentials", "scope": scope}, headers=basic(client_id, secret)
        )
    assert r.status_code == 200, r.text
    return r.json()["access_token"]
