"""An attacker's access tokens on /fhir: each is refused with 401 and
WWW-Authenticate error="invalid_token"; and revocation, introspection of them."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from tests.conftest import mint_token

from .forge import access_claims, b64, signed
from .oauth_support import FHIR, basic, confidential_client, http, system_token


async def _refused(app: Any, token: str) -> str:
    async with http(app, headers={"Authorization": f"Bearer {token}"}) as c:
        r = await c.get(f"{FHIR}/Patient")
    assert r.status_code == 401, r.text
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert r.json()["resourceType"] == "OperationOutcome"
    return r.headers["www-authenticate"]


async def test_a_genuine_token_is_accepted(app):
    async with http(app, headers={"Authorization": f"Bearer {signed(app, access_claims())}"}) as c:
        assert (await c.get(f"{FHIR}/Patient")).status_code == 200


async def test_alg_none_is_refused(app):
    key = app.state.signing_keys.signing
    await _refused(app, f"{b64({'alg': 'none', 'kid': key.kid})}.{b64(access_claims())}.")


async def test_hs256_signed_with_the_public_key_as_secret_is_refused(app):
    """The classic key-confusion attack: HMAC keyed with the published public key."""
    import hashlib
    import hmac

    public = app.state.signing_keys.signing
    for secret in (json.dumps(public.as_dict(private=False)).encode(), public.as_pem(private=False)):
        signing_input = f"{b64({'alg': 'HS256', 'kid': public.kid})}.{b64(access_claims())}"
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        await _refused(app, f"{signing_input}.{b64(signature)}")


async def test_an_expired_token_is_refused(app):
    now = int(time.time())
    assert "expired" in await _refused(app, signed(app, access_claims(iat=now - 900, nbf=now - 900, exp=now - 600)))


async def test_a_token_not_yet_valid_is_refused(app):
    now = int(time.time())
    await _refused(app, signed(app, access_claims(nbf=now + 600, iat=now + 600, exp=now + 900)))


async def test_a_token_without_exp_is_refused(app):
    await _refused(app, signed(app, access_claims(exp=None)))


async def test_a_token_for_another_audience_is_refused(app):
    await _refused(app, signed(app, access_claims(aud="https://other.example/fhir")))


async def test_a_token_of_another_issuer_is_refused(app):
    await _refused(app, signed(app, access_claims(iss="https://evil.example")))


async def test_a_token_without_issuer_is_refused(app):
    await _refused(app, signed(app, access_claims(iss=None)))


async def test_a_tampered_payload_is_refused(app):
    header, _, signature = signed(app, access_claims(scope="patient/*.rs", patient="1")).split(".")
    await _refused(app, f"{header}.{b64(access_claims())}.{signature}")


async def test_a_tampered_signature_is_refused(app):
    header, payload, signature = signed(app, access_claims()).split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    await _refused(app, f"{header}.{payload}.{flipped}")


async def test_a_token_signed_by_another_key_is_refused(app):
    other = ECKey.generate_key("P-256", parameters={"kid": app.state.signing_keys.signing.kid})
    token = jwt.encode({"alg": "ES256", "kid": other.kid}, access_claims(), other, algorithms=["ES256"])
    await _refused(app, token)


async def test_an_unknown_kid_is_refused(app):
    await _refused(app, signed(app, access_claims(), kid="no-such-key"))


async def test_garbage_is_refused(app):
    await _refused(app, "not.a.jwt")


async def test_a_revoked_token_is_refused(app, db):
    client_id, secret = await confidential_client(db, ["system/*.rs"])
    async with http(app) as c:
        issued = await c.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, headers=basic(client_id, secret)
        )
        token = issued.json()["access_token"]
        assert (await c.get(f"{FHIR}/Patient", headers={"Authorization": f"Bearer {token}"})).status_code == 200
        r = await c.post("/oauth/revoke", data={"token": token}, headers=basic(client_id, secret))
        assert r.status_code == 200
    assert "revoked" in await _refused(app, token)


async def test_a_client_cannot_revoke_another_clients_token(app, db):
    victim = await system_token(app, db)
    client_id, secret = await confidential_client(db, ["system/*.rs"])
    async with http(app) as c:
        await c.post("/oauth/revoke", data={"token": victim}, headers=basic(client_id, secret))
        assert (await c.get(f"{FHIR}/Patient", headers={"Authorization": f"Bearer {victim}"})).status_code == 200


# ---- introspection ----------------------------------------------------------------------------


async def _introspect(app, db, token: str) -> dict[str, Any]:
    client_id, secret = await confidential_client(db, ["system/*.rs"])
    async with http(app) as c:
        r = await c.post("/oauth/introspect", data={"token": token}, headers=basic(client_id, secret))
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    return r.json()


async def test_introspection_describes_an_active_access_token(app, db):
    token = await system_token(app, db)
    body = await _introspect(app, db, token)
    assert body["active"] is True and body["scope"] == "system/*.rs" and body["exp"] > time.time()


@pytest.mark.parametrize("kind", ["expired", "unknown", "foreign"])
async def test_introspection_says_inactive_for_unusable_tokens(app, db, kind):
    now = int(time.time())
    token = {
        "expired": signed(app, access_claims(iat=now - 900, nbf=now - 900, exp=now - 600)),
        "unknown": "some-random-string",
        "foreign": signed(app, access_claims(aud="https://other.example/fhir")),
    }[kind]
    assert await _introspect(app, db, token) == {"active": False}


async def test_introspection_of_a_revoked_token_is_inactive(app, db):
    token = mint_token(app, "system/*.rs")
    claims = app.state.tokens.decode(token, FHIR)
    await app.state.tokens.revoke(claims["jti"], claims["exp"])
    assert await _introspect(app, db, token) == {"active": False}


async def test_introspection_needs_an_authenticated_client(app, db):
    token = await system_token(app, db)
    async with http(app) as c:
        r = await c.post("/oauth/introspect", data={"token": token})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


async def test_the_jwks_verifies_our_tokens(app):
    from joserfc.jwk import KeySet

    async with http(app) as c:
        keys = (await c.get("/jwks")).json()
    assert all("d" not in k for k in keys["keys"])
    claims = jwt.decode(mint_token(app), KeySet.import_key_set(keys), algorithms=["ES256"]).claims
    assert claims["aud"] == FHIR
