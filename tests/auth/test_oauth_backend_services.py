"""SMART Backend Services: client_credentials with a signed JWT client assertion
(private_key_jwt, RS384 and ES384), keys registered as a JWKS or served at a jwks_uri
by a real local HTTP server; and the attacks on assertions."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from headless_ehr.auth import accounts

from .forge import assertion_token, client_assertion, client_key, key_client
from .oauth_support import FHIR, TOKEN_URL, http, serving

# ---- a JWKS served over real HTTP -------------------------------------------------------------

SERVED: dict[str, dict[str, Any]] = {}


async def _serve_jwks(request):
    name = request.path_params["name"]
    return JSONResponse(SERVED[name]) if name in SERVED else JSONResponse({}, 404)


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[str]:
    """A real HTTP server on a free loopback port, serving SERVED[name] at /<name>.json."""
    with serving(Starlette(routes=[Route("/{name}.json", _serve_jwks)])) as url:
        yield url


# ---- the service gets a token -----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
async def test_a_backend_service_gets_a_token_with_a_registered_jwks(app, db, alg):
    key = client_key(alg)
    client_id = await key_client(db, key)
    r = await assertion_token(app, client_assertion(key, alg, client_id))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "system/*.rs" and body["token_type"] == "Bearer" and "refresh_token" not in body
    async with http(app, headers={"Authorization": f"Bearer {body['access_token']}"}) as c:
        assert (await c.get(f"{FHIR}/Patient")).status_code == 200
    claims = app.state.tokens.decode(body["access_token"], FHIR)
    assert claims["sub"] == client_id == claims["client_id"]


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
async def test_a_backend_service_gets_a_token_with_keys_at_its_jwks_uri(app, db, jwks_server, alg):
    key = client_key(alg)
    name = uuid.uuid4().hex
    SERVED[name] = {"keys": [key.as_dict(private=False)]}
    client_id = await key_client(db, key, jwks_uri=f"{jwks_server}/{name}.json")
    r = await assertion_token(app, client_assertion(key, alg, client_id))
    assert r.status_code == 200, r.text


async def test_a_rotated_key_at_the_jwks_uri_is_fetched_again(app, db, jwks_server):
    old, new = client_key("ES384"), client_key("ES384")
    name = uuid.uuid4().hex
    SERVED[name] = {"keys": [old.as_dict(private=False)]}
    client_id = await key_client(db, old, jwks_uri=f"{jwks_server}/{name}.json")
    assert (await assertion_token(app, client_assertion(old, "ES384", client_id))).status_code == 200
    SERVED[name] = {"keys": [new.as_dict(private=False)]}
    app.state.jwks_cache._fetched.clear()  # the 10 s refetch guard is time, not behaviour
    assert (await assertion_token(app, client_assertion(new, "ES384", client_id))).status_code == 200


async def test_an_unreachable_jwks_uri_is_invalid_client(app, db):
    key = client_key("ES384")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client_id = await key_client(db, key, jwks_uri=f"http://127.0.0.1:{port}/jwks.json")
    r = await assertion_token(app, client_assertion(key, "ES384", client_id))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


# ---- attacks ----------------------------------------------------------------------------------


async def test_a_replayed_assertion_jti_is_refused(app, db):
    key = client_key("ES384")
    client_id = await key_client(db, key)
    assertion = client_assertion(key, "ES384", client_id)
    assert (await assertion_token(app, assertion)).status_code == 200
    replayed = await assertion_token(app, assertion)
    assert replayed.status_code == 401 and replayed.json()["error"] == "invalid_client"
    assert "jti" in replayed.json()["error_description"]


async def test_an_assertion_exp_more_than_five_minutes_ahead_is_refused(app, db):
    key = client_key("ES384")
    client_id = await key_client(db, key)
    r = await assertion_token(app, client_assertion(key, "ES384", client_id, exp=int(time.time()) + 3600))
    assert r.status_code == 401 and "five minutes" in r.json()["error_description"]


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": None},
        {"exp": int(time.time()) - 3600},
        {"jti": None},
        {"aud": "http://testserver/fhir"},
        {"aud": "https://other.example/oauth/token"},
        {"sub": "someone-else"},
        {"nbf": int(time.time()) + 3600},
    ],
    ids=["no-exp", "expired", "no-jti", "aud-fhir-base", "aud-other-server", "sub-not-iss", "not-yet-valid"],
)
async def test_an_assertion_with_bad_claims_is_refused(app, db, changes):
    key = client_key("ES384")
    client_id = await key_client(db, key)
    r = await assertion_token(app, client_assertion(key, "ES384", client_id, **changes))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


async def test_an_assertion_signed_by_another_clients_key_is_refused(app, db):
    mine, theirs = client_key("ES384"), client_key("ES384")
    client_id = await key_client(db, mine)
    await key_client(db, theirs)
    forged = client_assertion(theirs, "ES384", client_id)
    r = await assertion_token(app, forged)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    # not even when it reuses our kid
    forged = jwt.encode(
        {"alg": "ES384", "kid": mine.kid},
        {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": int(time.time()) + 60, "jti": "x1"},
        theirs,
        algorithms=["ES384"],
    )
    assert (await assertion_token(app, forged)).status_code == 401


async def test_an_unsigned_assertion_is_refused(app, db):
    import base64
    import json

    key = client_key("ES384")
    client_id = await key_client(db, key)

    def b64(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": int(time.time()) + 60, "jti": "n1"}
    unsigned = f"{b64({'alg': 'none', 'kid': key.kid})}.{b64(claims)}."
    r = await assertion_token(app, unsigned)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


async def test_an_rs256_assertion_is_refused(app, db):
    key = RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex})
    client_id = await key_client(db, key)
    r = await assertion_token(app, client_assertion(key, "RS256", client_id))
    assert r.status_code == 401 and "RS384" in r.json()["error_description"]


async def test_a_tampered_assertion_is_refused(app, db):
    key = client_key("RS384")
    client_id = await key_client(db, key)
    header, _, signature = client_assertion(key, "RS384", client_id).split(".")
    other_payload = client_assertion(key, "RS384", client_id, exp=int(time.time()) + 299).split(".")[1]
    r = await assertion_token(app, f"{header}.{other_payload}.{signature}")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


async def test_the_wrong_assertion_type_is_refused(app, db):
    key = client_key("ES384")
    client_id = await key_client(db, key)
    r = await assertion_token(app, client_assertion(key, "ES384", client_id), client_assertion_type="urn:other")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


async def test_a_disabled_service_gets_no_token(app, db):
    key = client_key("ES384")
    client_id = await key_client(db, key)
    await accounts.disable_client(db, client_id)
    r = await assertion_token(app, client_assertion(key, "ES384", client_id))
    assert r.status_code == 401


async def test_a_service_gets_only_its_registered_system_scopes(app, db):
    key = client_key("ES384")
    client_id = await key_client(db, key)
    r = await assertion_token(app, client_assertion(key, "ES384", client_id), scope="system/*.cruds")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
