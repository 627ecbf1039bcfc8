"""The admin API (/admin/...): who may call it, and clients, users and launches through it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from joserfc.jwk import ECKey, RSAKey

from headless_ehr.auth import accounts
from headless_ehr.auth.bootstrap import admin_client_file
from tests.conftest import bearer, mint_token


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _admin_id(app: Any) -> str:
    return orjson.loads(admin_client_file(app.state.settings.data_dir).read_bytes())["client_id"]


@pytest.fixture
async def http(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the shared app without a token, addressed at the server's origin."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


def _as(app: Any, client_id: str, scope: str = "system/*.*", **claims: Any) -> dict[str, str]:
    claims.setdefault("subject", client_id)
    return bearer(mint_token(app, scope, client_id=client_id, **claims))


@pytest.fixture
def admin(app: Any) -> dict[str, str]:
    """Headers with a system/*.* token of the bootstrap admin client."""
    return _as(app, _admin_id(app))


# ---- who may call ---------------------------------------------------------------------


async def test_no_token_is_401_with_a_bearer_challenge(http):
    res = await http.get("/admin/clients")
    assert res.status_code == 401
    assert res.headers["www-authenticate"].startswith("Bearer")
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_a_malformed_token_is_401(http):
    res = await http.get("/admin/clients", headers=bearer("not-a-token"))
    assert res.status_code == 401 and 'error="invalid_token"' in res.headers["www-authenticate"]


async def test_an_admin_client_token_with_system_star_star_may_list_clients(http, admin):
    res = await http.get("/admin/clients", headers=admin)
    assert res.status_code == 200
    assert any(c["admin"] for c in res.json()["clients"])


async def test_an_admin_client_token_with_the_v2_system_scope_may_call(http, app):
    res = await http.get("/admin/users", headers=_as(app, _admin_id(app), "system/*.cruds"))
    assert res.status_code == 200


async def test_a_non_admin_client_token_is_403(http, app, db):
    client, _ = await accounts.create_client(db, "plain", scopes=["system/*.*"])
    res = await http.get("/admin/clients", headers=_as(app, client.client_id))
    assert res.status_code == 403 and res.json()["resourceType"] == "OperationOutcome"


async def test_an_unknown_client_token_is_403(http, app):
    res = await http.get("/admin/clients", headers=_as(app, "test-client"))
    assert res.status_code == 403


async def test_an_admin_client_token_with_a_narrower_scope_is_403(http, app):
    for scope in ("system/*.rs", "system/Patient.cruds", "system/*.read", "user/*.*"):
        res = await http.get("/admin/clients", headers=_as(app, _admin_id(app), scope))
        assert res.status_code == 403, scope


async def test_a_patient_token_is_403(http, app):
    headers = _as(app, _admin_id(app), "patient/*.*", patient="123", subject="someone")
    assert (await http.get("/admin/clients", headers=headers)).status_code == 403


async def test_a_user_token_of_the_admin_client_is_403(http, app):
    headers = _as(app, _admin_id(app), subject="alice", fhirUser="Practitioner/7")
    assert (await http.get("/admin/clients", headers=headers)).status_code == 403


async def test_a_disabled_admin_clients_token_is_403(http, app, db, admin):
    other = (await http.post("/admin/clients", headers=admin, json={"name": "a2", "admin": True})).json()
    headers = _as(app, other["client_id"])
    assert (await http.get("/admin/clients", headers=headers)).status_code == 200
    assert (await http.patch(f"/admin/clients/{other['client_id']}", headers=admin, json={"enabled": False})).is_success
    assert (await http.get("/admin/clients", headers=headers)).status_code == 403


async def test_a_token_for_another_audience_is_401(http, app):
    token = mint_token(app, client_id=_admin_id(app), subject=_admin_id(app), base_url="http://elsewhere/fhir")
    assert (await http.get("/admin/clients", headers=bearer(token))).status_code == 401


async def test_a_fhir_system_token_is_not_enough_for_the_admin_api(http, client):
    # the suite's `client` fixture holds system/*.* of a client that is not an admin
    res = await http.get("/admin/users", headers={"Authorization": client.headers["Authorization"]})
    assert res.status_code == 403


# ---- clients ----------------------------------------------------------------------------


async def test_creating_a_confidential_client_returns_its_secret_once(http, admin, db):
    body = {"name": "Lab app", "redirect_uris": ["https://lab.example/cb"], "scopes": ["user/*.rs", "openid"]}
    res = await http.post("/admin/clients", headers=admin, json=body)
    assert res.status_code == 201, res.text
    created = res.json()
    assert created["client_secret"] and created["token_endpoint_auth_method"] == "client_secret_basic"
    assert res.headers["location"] == f"/admin/clients/{created['client_id']}"
    assert res.headers["cache-control"] == "no-store"
    assert await accounts.check_client_secret(db, created["client_id"], created["client_secret"])
    again = (await http.get(f"/admin/clients/{created['client_id']}", headers=admin)).json()
    assert "client_secret" not in again and again["name"] == "Lab app"
    assert again["scopes"] == ["user/*.rs", "openid"] and again["redirect_uris"] == ["https://lab.example/cb"]


async def test_a_public_client_gets_no_secret(http, admin):
    body = {"name": "SPA", "redirect_uris": ["http://127.0.0.1:9000/cb"], "scopes": ["patient/*.rs"], "public": True}
    created = (await http.post("/admin/clients", headers=admin, json=body)).json()
    assert "client_secret" not in created and created["public"] is True


async def test_a_client_with_a_jwks_gets_no_secret_and_keeps_its_keys(http, admin):
    key = RSAKey.generate_key(2048).as_dict(private=False)
    body = {"name": "backend", "scopes": ["system/*.rs"], "jwks": {"keys": [key]}}
    res = await http.post("/admin/clients", headers=admin, json=body)
    assert res.status_code == 201, res.text
    created = res.json()
    assert "client_secret" not in created and created["token_endpoint_auth_method"] == "private_key_jwt"
    assert created["jwks"]["keys"][0]["n"] == key["n"]


async def test_a_client_with_a_jwks_uri_is_asymmetric(http, admin):
    body = {"name": "backend", "scopes": ["system/*.rs"], "jwks_uri": "https://backend.example/jwks.json"}
    created = (await http.post("/admin/clients", headers=admin, json=body)).json()
    assert created["jwks_uri"] == "https://backend.example/jwks.json" and "client_secret" not in created


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": 5},
        {"name": "x", "redirect_uris": ["/relative/cb"]},
        {"name": "x", "redirect_uris": ["https://app.example/cb#frag"]},
        {"name": "x", "redirect_uris": "https://app.example/cb"},
        {"name": "x", "scopes": "system/*.rs"},
        {"name": "x", "scopes": ["patient/*.bogus"]},
        {"name": "x", "scopes": ["system/Observation.rs?x"] * 2 + [7]},
        {"name": "x", "public": "yes"},
        {"name": "x", "jwks": {"keys": [ECKey.generate_key("P-384").as_dict(private=True)]}},
        {"name": "x", "jwks": {"keys": []}},
        {"name": "x", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}},
        {"name": "x", "jwks": {"keys": [{"kty": "EC", "crv": "P-384", "x": "nope", "y": "nope"}]}},
        {"name": "x", "jwks_uri": "ftp://keys.example/jwks"},
        {"name": "x", "jwks_uri": "https://a.example/j", "jwks": {"keys": []}},
        {"name": "x", "public": True, "jwks_uri": "https://a.example/j"},
        {"name": "x", "redirect_uri": ["https://app.example/cb"]},
        {"name": "x", "policies": "nurses"},
    ],
)
async def test_a_bad_client_registration_is_400_with_an_operation_outcome(http, admin, body):
    res = await http.post("/admin/clients", headers=admin, json=body)
    assert res.status_code == 400, res.text
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_a_body_that_is_not_json_is_400(http, admin):
    res = await http.post("/admin/clients", headers={**admin, "Content-Type": "application/json"}, content=b"{nope")
    assert res.status_code == 400 and res.json()["resourceType"] == "OperationOutcome"


async def test_a_body_that_is_not_an_object_is_400(http, admin):
    assert (await http.post("/admin/clients", headers=admin, json=["x"])).status_code == 400


async def test_a_form_body_is_415(http, admin):
    res = await http.post("/admin/clients", headers=admin, data={"name": "x"})
    assert res.status_code == 415


async def test_a_taken_client_id_is_409(http, admin):
    client_id = _name("fixed")
    assert (await http.post("/admin/clients", headers=admin, json={"name": "a", "client_id": client_id})).is_success
    res = await http.post("/admin/clients", headers=admin, json={"name": "b", "client_id": client_id})
    assert res.status_code == 409


async def _policy(http: httpx.AsyncClient, admin: dict[str, str], name: str) -> None:
    """An (empty) access policy of the name, so that it may be assigned."""
    res = await http.post("/admin/policies", headers=admin, json={"name": name, "rules": []})
    assert res.status_code in (201, 409), res.text


async def test_policies_are_stored_and_shown(http, admin, db):
    for policy in ("nurses", "ward-3"):
        await _policy(http, admin, policy)
    body = {"name": "with policies", "scopes": ["user/*.rs"], "policies": ["nurses", "ward-3"]}
    created = (await http.post("/admin/clients", headers=admin, json=body)).json()
    assert created["policies"] == ["nurses", "ward-3"]
    stored = await db.fetchval("SELECT policies FROM auth_client WHERE client_id = $1", created["client_id"])
    assert stored == ["nurses", "ward-3"]
    listed = (await http.get("/admin/clients", headers=admin)).json()["clients"]
    assert next(c for c in listed if c["client_id"] == created["client_id"])["policies"] == ["nurses", "ward-3"]


async def test_listing_clients_never_shows_secrets_or_digests(http, admin, db):
    created = (await http.post("/admin/clients", headers=admin, json={"name": "s"})).json()
    digest = await db.fetchval("SELECT secret_hash FROM auth_client WHERE client_id = $1", created["client_id"])
    text = (await http.get("/admin/clients", headers=admin)).text
    assert created["client_secret"] not in text and digest not in text and "secret_hash" not in text


async def test_disabling_a_client_and_enabling_it_again(http, admin, db):
    created = (await http.post("/admin/clients", headers=admin, json={"name": "d"})).json()
    url = f"/admin/clients/{created['client_id']}"
    res = await http.patch(url, headers=admin, json={"enabled": False})
    assert res.status_code == 200 and res.json()["enabled"] is False
    assert await accounts.check_client_secret(db, created["client_id"], created["client_secret"]) is None
    assert (await http.patch(url, headers=admin, json={"enabled": True})).json()["enabled"] is True
    assert await accounts.check_client_secret(db, created["client_id"], created["client_secret"])


async def test_patch_changes_nothing_but_enabled(http, admin):
    created = (await http.post("/admin/clients", headers=admin, json={"name": "p"})).json()
    res = await http.patch(f"/admin/clients/{created['client_id']}", headers=admin, json={"name": "renamed"})
    assert res.status_code == 400


async def test_deleting_a_client(http, admin):
    created = (await http.post("/admin/clients", headers=admin, json={"name": "gone"})).json()
    url = f"/admin/clients/{created['client_id']}"
    assert (await http.delete(url, headers=admin)).status_code == 204
    assert (await http.get(url, headers=admin)).status_code == 404
    assert (await http.delete(url, headers=admin)).status_code == 404


async def test_an_admin_client_cannot_disable_or_delete_itself(http, app, admin):
    url = f"/admin/clients/{_admin_id(app)}"
    assert (await http.patch(url, headers=admin, json={"enabled": False})).status_code == 409
    assert (await http.delete(url, headers=admin)).status_code == 409
    assert (await http.get("/admin/clients", headers=admin)).status_code == 200


async def test_an_unknown_client_is_404(http, admin):
    for method in ("GET", "DELETE"):
        res = await http.request(method, "/admin/clients/no-such-client", headers=admin)
        assert res.status_code == 404 and res.json()["resourceType"] == "OperationOutcome"
    res = await http.patch("/admin/clients/no-such-client", headers=admin, json={"enabled": False})
    assert res.status_code == 404


async def test_a_wrong_method_is_405_with_an_operation_outcome(http, admin):
    res = await http.put("/admin/clients", headers=admin, json={})
    assert res.status_code == 405 and res.json()["resourceType"] == "OperationOutcome"


# ---- users ------------------------------------------------------------------------------


async def test_creating_a_user_never_returns_the_password(http, admin, db):
    await _policy(http, admin, "ward-3")
    username = _name("alice")
    body = {
        "username": username,
        "password": "correct horse battery",
        "fhir_user": "Practitioner/7",
        "roles": ["nurse"],
        "patients": ["123", "Patient/456"],
        "policies": ["ward-3"],
    }
    res = await http.post("/admin/users", headers=admin, json=body)
    assert res.status_code == 201, res.text
    created = res.json()
    assert "password" not in res.text and "correct horse" not in res.text
    assert created["fhir_user"] == "Practitioner/7" and created["roles"] == ["nurse"]
    assert created["patients"] == ["123", "456"] and created["policies"] == ["ward-3"]
    assert res.headers["location"] == f"/admin/users/{username}"
    assert await accounts.authenticate_user(db, username, "correct horse battery")
    stored = await db.fetchval("SELECT password_hash FROM auth_user WHERE username = $1", username)
    assert stored.startswith("$argon2id$")
    listed = (await http.get("/admin/users", headers=admin)).text
    assert "correct horse" not in listed and "argon2" not in listed


@pytest.mark.parametrize(
    "body",
    [
        {"password": "correct horse battery"},
        {"username": "bob"},
        {"username": "bob", "password": "short"},
        {"username": "bob", "password": "correct horse battery", "fhir_user": "Observation/1"},
        {"username": "bob", "password": "correct horse battery", "fhir_user": "Patient"},
        {"username": "b o b", "password": "correct horse battery"},
        {"username": "bob", "password": "correct horse battery", "roles": "nurse"},
        {"username": "bob", "password": "correct horse battery", "patients": ["not an id!"]},
        {"username": "bob", "password": 123456789012345},
        {"username": "bob", "password": "correct horse battery", "email": "bob@example.org"},
    ],
)
async def test_a_bad_user_registration_is_400(http, admin, body):
    res = await http.post("/admin/users", headers=admin, json=body)
    assert res.status_code == 400, res.text
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_a_taken_username_is_409(http, admin):
    body = {"username": _name("dup"), "password": "correct horse battery"}
    assert (await http.post("/admin/users", headers=admin, json=body)).status_code == 201
    assert (await http.post("/admin/users", headers=admin, json=body)).status_code == 409


async def test_disabling_a_user_stops_their_login(http, admin, db):
    username = _name("carol")
    await http.post("/admin/users", headers=admin, json={"username": username, "password": "correct horse battery"})
    res = await http.patch(f"/admin/users/{username}", headers=admin, json={"enabled": False})
    assert res.status_code == 200 and res.json()["enabled"] is False
    assert await accounts.authenticate_user(db, username, "correct horse battery") is None


async def test_deleting_a_user(http, admin):
    username = _name("dave")
    await http.post("/admin/users", headers=admin, json={"username": username, "password": "correct horse battery"})
    assert (await http.delete(f"/admin/users/{username}", headers=admin)).status_code == 204
    assert (await http.get(f"/admin/users/{username}", headers=admin)).status_code == 404


async def test_users_need_the_admin_client_too(http, app):
    assert (await http.get("/admin/users")).status_code == 401
    assert (await http.get("/admin/users", headers=_as(app, "test-client"))).status_code == 403


# ---- EHR launch -------------------------------------------------------------------------


async def test_a_launch_names_the_patient_and_encounter(http, admin, db):
    from headless_ehr.auth.launch import resolve_launch

    res = await http.post("/admin/launch", headers=admin, json={"patient": "123", "encounter": "Encounter/9"})
    assert res.status_code == 201, res.text
    context = await resolve_launch(db, res.json()["launch"])
    assert context is not None and (context.patient, context.encounter) == ("123", "9")


@pytest.mark.parametrize(
    "body", [{}, {"encounter": "9"}, {"patient": "no id!"}, {"patient": 5}, {"patient": "1", "x": 1}]
)
async def test_a_bad_launch_is_400(http, admin, body):
    res = await http.post("/admin/launch", headers=admin, json=body)
    assert res.status_code == 400 and res.json()["resourceType"] == "OperationOutcome"


async def test_a_launch_needs_the_admin_client(http, app):
    assert (await http.post("/admin/launch", json={"patient": "1"})).status_code == 401
    res = await http.post("/admin/launch", headers=_as(app, "test-client"), json={"patient": "1"})
    assert res.status_code == 403


# ---- with tokens from /oauth/token ----------------------------------------------------


def _basic(client_id: str, secret: str) -> httpx.BasicAuth:
    return httpx.BasicAuth(client_id, secret)


async def _token(http: httpx.AsyncClient, client_id: str, secret: str, scope: str = "system/*.*") -> httpx.Response:
    data = {"grant_type": "client_credentials", "scope": scope}
    return await http.post("/oauth/token", data=data, auth=_basic(client_id, secret))


async def test_the_bootstrap_admin_client_gets_a_token_that_opens_the_admin_api(http, app):
    credentials = orjson.loads(admin_client_file(app.state.settings.data_dir).read_bytes())
    for scope in ("system/*.*", "system/*.cruds"):
        res = await _token(http, credentials["client_id"], credentials["client_secret"], scope)
        assert res.status_code == 200, res.text
        headers = bearer(res.json()["access_token"])
        assert (await http.get("/admin/clients", headers=headers)).status_code == 200
        assert (await http.get("/fhir/Patient", headers=headers)).status_code == 200


async def test_a_token_of_a_client_made_through_the_api_is_403_on_the_admin_api(http, admin):
    created = (await http.post("/admin/clients", headers=admin, json={"name": "n", "scopes": ["system/*.*"]})).json()
    res = await _token(http, created["client_id"], created["client_secret"])
    assert res.status_code == 200, res.text
    assert (await http.get("/admin/clients", headers=bearer(res.json()["access_token"]))).status_code == 403


async def test_a_disabled_client_cannot_get_a_token(http, admin):
    created = (await http.post("/admin/clients", headers=admin, json={"name": "d", "scopes": ["system/*.rs"]})).json()
    assert (await _token(http, created["client_id"], created["client_secret"], "system/*.rs")).status_code == 200
    await http.patch(f"/admin/clients/{created['client_id']}", headers=admin, json={"enabled": False})
    res = await _token(http, created["client_id"], created["client_secret"], "system/*.rs")
    assert res.status_code == 401 and res.json()["error"] == "invalid_client"


async def test_a_deleted_client_cannot_get_a_token(http, admin):
    created = (await http.post("/admin/clients", headers=admin, json={"name": "x", "scopes": ["system/*.rs"]})).json()
    await http.delete(f"/admin/clients/{created['client_id']}", headers=admin)
    res = await _token(http, created["client_id"], created["client_secret"], "system/*.rs")
    assert res.status_code == 401 and res.json()["error"] == "invalid_client"
