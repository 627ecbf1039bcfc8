"""Security review of the token endpoint and bearer tokens: races, token confusion, key fetching."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from headless_ehr.auth import accounts, grants
from headless_ehr.auth.tokens import PRUNE_SECONDS

from .forge import access_claims, assertion_token, client_assertion, client_key, key_client, signed
from .oauth_support import FHIR, http, pkce, serving, unique
from .test_oauth_authorization_code import PASSWORD, REDIRECT, SCOPES, _code, _exchange, _refresh, _request


@pytest.fixture
async def app_client(db) -> accounts.Client:
    client, _ = await accounts.create_client(db, "Race app", [REDIRECT], SCOPES, public=True)
    return client


@pytest.fixture
async def patient_user(db) -> accounts.User:
    return await accounts.create_user(db, unique("pat"), PASSWORD, f"Patient/{unique('pt')}")


async def _tokens(app, app_client, user) -> dict:
    verifier, challenge = pkce()
    code = await _code(app, _request(app_client.client_id, challenge), user.username)
    r = await _exchange(app, app_client.client_id, code, verifier)
    assert r.status_code == 200, r.text
    return r.json()


async def _fhir_read(app, token: str) -> int:
    async with http(app, headers={"Authorization": f"Bearer {token}"}) as c:
        return (await c.get(f"{FHIR}/Patient")).status_code


# ---- races ------------------------------------------------------------------------------------


async def test_concurrent_refreshes_with_one_token_do_not_both_succeed(app, app_client, patient_user):
    first = await _tokens(app, app_client, patient_user)
    answers = await asyncio.gather(*(_refresh(app, app_client.client_id, first["refresh_token"]) for _ in range(4)))
    assert sorted(r.status_code for r in answers) == [200, 400, 400, 400]
    # the reuse revoked the family: the one rotated token is dead too
    (won,) = [r.json() for r in answers if r.status_code == 200]
    assert (await _refresh(app, app_client.client_id, won["refresh_token"])).status_code == 400


async def test_concurrent_redemptions_of_one_code_do_not_both_succeed(app, app_client, patient_user):
    verifier, challenge = pkce()
    code = await _code(app, _request(app_client.client_id, challenge), patient_user.username)
    answers = await asyncio.gather(*(_exchange(app, app_client.client_id, code, verifier) for _ in range(4)))
    assert sorted(r.status_code for r in answers) == [200, 400, 400, 400]


async def test_concurrent_assertions_with_one_jti_do_not_both_succeed(app, db):
    key = client_key("ES384")
    client_id = await key_client(db, key)
    assertion = client_assertion(key, "ES384", client_id)
    answers = await asyncio.gather(*(assertion_token(app, assertion) for _ in range(4)))
    assert sorted(r.status_code for r in answers) == [200, 401, 401, 401]


# ---- token confusion --------------------------------------------------------------------------


async def test_an_id_token_is_not_an_access_token(app, app_client, patient_user):
    body = await _tokens(app, app_client, patient_user)
    assert await _fhir_read(app, body["access_token"]) == 200
    assert await _fhir_read(app, body["id_token"]) == 401


async def test_a_refresh_token_is_not_an_access_token(app, app_client, patient_user):
    body = await _tokens(app, app_client, patient_user)
    assert await _fhir_read(app, body["refresh_token"]) == 401


async def test_a_client_assertion_is_not_an_access_token(app, db):
    key = client_key("ES384")
    client_id = await key_client(db, key)
    assert await _fhir_read(app, client_assertion(key, "ES384", client_id, aud=FHIR, scope="system/*.*")) == 401


async def test_a_jwt_of_ours_that_is_not_typed_as_an_access_token_is_refused(app):
    # anything else this server ever signs (ID tokens today) must not pass as an access token,
    # even if its claims happened to look like one (RFC 9068 §4: typ at+jwt)
    claims = access_claims(sub="x", client_id="x", nbf=None, exp=int(time.time()) + 60, jti=unique("jti"))
    token = signed(app, claims, typ="JWT")
    assert await _fhir_read(app, token) == 401


# ---- fetching a client's keys -----------------------------------------------------------------

FETCHES: list[str] = []


async def _failing_jwks(request):
    FETCHES.append(request.url.path)
    return JSONResponse({"error": "down"}, 503)


@pytest.fixture(scope="module")
def failing_jwks_server() -> Iterator[str]:
    with serving(Starlette(routes=[Route("/{name}.json", _failing_jwks)])) as url:
        yield url


async def test_a_failing_jwks_uri_is_not_fetched_again_for_every_assertion(app, db, failing_jwks_server):
    # unauthenticated callers must not turn the token endpoint into a flood against a client's host
    key = client_key("ES384")
    name = unique("down")
    client_id = await key_client(db, key, jwks_uri=f"{failing_jwks_server}/{name}.json")
    answers = [await assertion_token(app, client_assertion(key, "ES384", client_id)) for _ in range(5)]
    assert all(r.status_code == 401 for r in answers)
    assert FETCHES.count(f"/{name}.json") == 1


# ---- bounded state ----------------------------------------------------------------------------


async def test_revocations_of_expired_tokens_are_forgotten_in_memory_and_in_the_table(app, db):
    tokens = app.state.tokens
    gone, live = unique("jti"), unique("jti")
    await tokens.revoke(gone, time.time() - 3600)
    await tokens.revoke(live, time.time() + 300)
    tokens._pruned -= PRUNE_SECONDS  # the next poll is a pruning one
    await tokens._load_revocations()
    assert not tokens.is_revoked(gone) and tokens.is_revoked(live)
    rows = await db.fetch("SELECT jti FROM auth_revoked_token WHERE jti = ANY($1::text[])", [gone, live])
    assert [r["jti"] for r in rows] == [live]


async def test_spent_offline_refresh_tokens_are_purged_after_30_days_and_live_ones_kept(app, db, app_client):
    family = uuid.uuid4()
    insert = (
        "INSERT INTO auth_refresh_token (token_hash, family, client_id, scope, aud, created_at, used_at)"
        " VALUES ($1, $2, $3, 'offline_access', $4, now() - interval '40 days', $5)"
    )
    spent, live = unique("spent"), unique("live")
    await db.execute(insert, spent, family, app_client.client_id, FHIR, datetime.now(UTC) - timedelta(days=35))
    await db.execute(insert, live, family, app_client.client_id, FHIR, None)
    await grants.purge(db)
    rows = await db.fetch("SELECT token_hash FROM auth_refresh_token WHERE family = $1", family)
    assert [r["token_hash"] for r in rows] == [live]
