"""The token endpoint's client_credentials grant with client_secret_basic."""

from __future__ import annotations

from .oauth_support import FHIR, basic, confidential_client, http


async def _token(app, headers, **form):
    async with http(app) as c:
        return await c.post("/oauth/token", data={"grant_type": "client_credentials", **form}, headers=headers)


async def test_a_confidential_client_gets_a_system_token_that_reads_fhir(app, db):
    client_id, secret = await confidential_client(db, ["system/*.rs"])
    r = await _token(app, basic(client_id, secret), scope="system/*.rs")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "system/*.rs" and body["expires_in"] > 0
    assert "refresh_token" not in body
    assert r.headers["cache-control"] == "no-store"
    async with http(app) as c:
        read = await c.get(FHIR + "/Patient", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert read.status_code == 200


async def test_the_granted_scope_is_what_the_client_may_have(app, db):
    client_id, secret = await confidential_client(db, ["system/Observation.rs"])
    r = await _token(app, basic(client_id, secret), scope="system/Observation.rs system/Patient.rs")
    assert r.status_code == 200 and r.json()["scope"] == "system/Observation.rs"


async def test_no_scope_asked_grants_the_registered_system_scopes(app, db):
    client_id, secret = await confidential_client(db, ["system/*.rs", "openid"])
    r = await _token(app, basic(client_id, secret))
    assert r.json()["scope"] == "system/*.rs"


async def test_a_scope_the_client_may_not_have_is_invalid_scope(app, db):
    client_id, secret = await confidential_client(db, ["system/Observation.rs"])
    r = await _token(app, basic(client_id, secret), scope="system/Patient.rs")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"


async def test_a_wrong_secret_is_invalid_client_with_a_basic_challenge(app, db):
    client_id, secret = await confidential_client(db, ["system/*.rs"])
    r = await _token(app, basic(client_id, secret + "x"), scope="system/*.rs")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    assert r.headers["www-authenticate"].startswith("Basic")


async def test_a_disabled_client_gets_no_token(app, db):
    from headless_ehr.auth import accounts

    client_id, secret = await confidential_client(db, ["system/*.rs"])
    await accounts.disable_client(db, client_id)
    r = await _token(app, basic(client_id, secret), scope="system/*.rs")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


async def test_the_secret_in_the_body_is_refused(app, db):
    client_id, secret = await confidential_client(db, ["system/*.rs"])
    r = await _token(app, {}, client_id=client_id, client_secret=secret)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


async def test_an_unknown_grant_type_is_unsupported(app, db):
    client_id, secret = await confidential_client(db, ["system/*.rs"])
    async with http(app) as c:
        r = await c.post("/oauth/token", data={"grant_type": "password"}, headers=basic(client_id, secret))
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


async def test_a_json_body_is_invalid_request(app, db):
    client_id, secret = await confidential_client(db, ["system/*.rs"])
    async with http(app) as c:
        r = await c.post("/oauth/token", json={"grant_type": "client_credentials"}, headers=basic(client_id, secret))
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


async def test_a_repeated_parameter_is_invalid_request(app, db):
    client_id, secret = await confidential_client(db, ["system/*.rs"])
    async with http(app) as c:
        r = await c.post(
            "/oauth/token",
            content="grant_type=client_credentials&scope=system/*.rs&scope=system/*.rs",
            headers={**basic(client_id, secret), "Content-Type": "application/x-www-form-urlencoded"},
        )
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


async def test_a_nul_character_is_invalid_request_not_a_crash(app):
    async with http(app) as c:
        r = await c.post("/oauth/token", data={"grant_type": "authorization_code", "client_id": "a\x00b", "code": "x"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_request"
        page = await c.get("/oauth/authorize", params={"client_id": "a\x00b", "redirect_uri": "https://x/cb"})
        assert page.status_code == 400


async def test_a_public_client_may_not_use_client_credentials(app, db):
    from headless_ehr.auth import accounts

    client, _ = await accounts.create_client(db, "spa", ["https://app.example/cb"], ["system/*.rs"], public=True)
    r = await _token(app, {}, client_id=client.client_id)
    assert r.status_code == 400 and r.json()["error"] == "unauthorized_client"


async def test_get_on_the_token_endpoint_is_an_oauth_405(app):
    async with http(app) as c:
        r = await c.get("/oauth/token")
    assert r.status_code == 405 and r.json()["error"] == "invalid_request" and r.headers["allow"] == "POST"
