"""Token signing keys live in PostgreSQL: every node signs and verifies with the same
keys; they rotate on a schedule, and a retired key keeps verifying (and stays at /jwks)
until the tokens it signed have expired, then goes."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from joserfc import jws

from headless_ehr.app import create_app
from headless_ehr.auth.keys import MAX_TOKEN_LIFETIME
from tests.conftest import bearer, mint_token


@pytest.fixture
async def nodes(settings, fresh_database, tmp_path) -> AsyncIterator[Any]:
    """A factory of apps ("nodes") on one database of this test's own, and a data dir of
    their own: the first start on a new database writes its admin client's credentials
    there, which in the shared data dir would replace the shared app's (later admin
    requests of the suite then answered 403, "only an admin client")."""
    started = []

    async def node() -> Any:
        application = create_app(dataclasses.replace(settings, database_url=fresh_database, data_dir=tmp_path))
        lifespan = application.router.lifespan_context(application)
        await lifespan.__aenter__()
        started.append(lifespan)
        return application

    yield node
    for lifespan in reversed(started):
        await lifespan.__aexit__(None, None, None)


def _client(app: Any, token: str | None = None) -> httpx.AsyncClient:
    headers = bearer(token) if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers=headers)


def _kid(token: str) -> str:
    return jws.extract_compact(token.encode()).protected["kid"]


async def _status(app: Any, token: str) -> int:
    async with _client(app, token) as c:
        return (await c.get("/fhir/Patient", params={"_count": "1"})).status_code


async def test_a_second_node_verifies_the_first_nodes_tokens(nodes) -> None:
    first, second = await nodes(), await nodes()
    token = mint_token(first)
    assert _kid(token) == second.state.signing_keys.signing.kid
    assert await _status(second, token) == 200


async def test_after_a_rotation_old_tokens_verify_new_ones_use_the_new_key_and_jwks_lists_both(nodes) -> None:
    app = await nodes()
    before = mint_token(app)
    await app.state.signing_keys.rotate_now()
    after = mint_token(app)
    assert _kid(after) != _kid(before)
    assert await _status(app, before) == 200 and await _status(app, after) == 200
    async with _client(app) as c:
        kids = {k["kid"] for k in (await c.get("/jwks")).json()["keys"]}
    assert {_kid(before), _kid(after)} <= kids


async def test_a_key_older_than_the_rotation_period_is_replaced_on_the_next_refresh(nodes, db_of) -> None:
    app = await nodes()
    old = app.state.signing_keys.signing.kid
    await db_of(app).execute("UPDATE auth_signing_key SET created_at = now() - interval '25 hours'")
    await app.state.signing_keys.refresh()  # what every node does each minute
    assert app.state.signing_keys.signing.kid != old
    assert await db_of(app).fetchval("SELECT retired_at IS NOT NULL FROM auth_signing_key WHERE kid = $1", old)


async def test_a_key_retired_longer_than_a_token_can_live_is_deleted_and_its_tokens_refused(nodes, db_of) -> None:
    app = await nodes()
    token = mint_token(app)
    await app.state.signing_keys.rotate_now()
    retired = "UPDATE auth_signing_key SET retired_at = now() - make_interval(secs => $1) WHERE kid = $2"
    await db_of(app).execute(retired, MAX_TOKEN_LIFETIME + 120, _kid(token))
    await app.state.signing_keys.refresh()
    async with _client(app) as c:
        assert _kid(token) not in {k["kid"] for k in (await c.get("/jwks")).json()["keys"]}
    app.state.tokens._cache.clear()  # as on a node that never saw the token
    assert await _status(app, token) == 401


@pytest.fixture
def db_of() -> Any:
    return lambda app: app.state.pool
