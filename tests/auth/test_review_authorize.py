"""Security review of the authorization endpoint: what a signed-in user can obtain."""

from __future__ import annotations

import pytest

from headless_ehr.auth import accounts, launch

from .oauth_support import http, parse_forms, pkce, submit, unique
from .test_oauth_authorization_code import PASSWORD, REDIRECT, _code, _exchange, _request, _sign_in


async def test_a_user_flow_never_grants_system_scopes(app, db):
    # a client that is both a backend service and a user-facing app
    client, _ = await accounts.create_client(
        db, "Dual", [REDIRECT], ["system/*.*", "user/*.rs", "patient/*.rs", "launch/patient"], public=True
    )
    pid = unique("pt")
    user = await accounts.create_user(db, unique("pat"), PASSWORD, f"Patient/{pid}")
    verifier, challenge = pkce()
    request = _request(client.client_id, challenge, scope="system/*.* patient/*.rs")
    code = await _code(app, request, user.username)
    r = await _exchange(app, client.client_id, code, verifier)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "patient/*.rs"


async def test_only_system_scopes_asked_by_a_user_flow_is_an_invalid_scope(app, db):
    client, _ = await accounts.create_client(db, "Dual", [REDIRECT], ["system/*.*", "user/*.rs"], public=True)
    _, challenge = pkce()
    async with http(app) as browser:
        r = await browser.get("/oauth/authorize", params=_request(client.client_id, challenge, scope="system/*.*"))
    assert r.status_code == 302
    assert "error=invalid_scope" in r.headers["location"]


@pytest.mark.parametrize(
    ("client_scopes", "fhir_user", "listed"),
    [
        pytest.param(["launch", "patient/*.rs", "openid", "fhirUser"], "Patient/{own}", False, id="a patient"),
        pytest.param(["launch", "patient/*.rs"], "Practitioner/7", True, id="a user with a patient list"),
    ],
)
async def test_a_user_cannot_take_a_launch_for_a_patient_outside_their_reach(app, db, client_scopes, fhir_user, listed):
    client, _ = await accounts.create_client(db, "EHR app", [REDIRECT], client_scopes, public=True)
    own, other = unique("pt"), unique("pt")
    patients = [own] if listed else []
    user = await accounts.create_user(db, unique("user"), PASSWORD, fhir_user.format(own=own), [], patients)
    context = await launch.create_launch(db, other, None, "test")
    _, challenge = pkce()
    request = _request(client.client_id, challenge, scope="launch patient/*.rs", launch=context.launch_id)
    async with http(app) as browser:
        r = await _sign_in(browser, request, user.username)
    assert r.status_code == 303, r.text
    assert "error=access_denied" in r.headers["location"]


async def test_the_login_page_throttles_repeated_failures_for_a_username(app, db):
    client, _ = await accounts.create_client(db, "App", [REDIRECT], ["user/*.rs"], public=True)
    user = await accounts.create_user(db, unique("dr"), PASSWORD, "Practitioner/7")
    _, challenge = pkce()
    request = _request(client.client_id, challenge, scope="user/*.rs")
    statuses = []
    async with http(app) as browser:
        for _ in range(12):
            page = await browser.get("/oauth/authorize", params=request)
            (login,) = parse_forms(page.text)
            r = await submit(browser, login, login.fill({"username": user.username, "password": "wrong password"}))
            statuses.append(r.status_code)
        page = await browser.get("/oauth/authorize", params=request)
        (login,) = parse_forms(page.text)
        right = await submit(browser, login, login.fill({"username": user.username, "password": PASSWORD}))
    assert 429 in statuses
    assert right.status_code == 429  # even the right password waits: the guesser cannot tell
    assert "Too many" in right.text


async def test_behind_a_path_prefix_the_session_cookie_is_sent_back_to_the_login_form(app_with, db):
    # EHR_PUBLIC_BASE_URL https://ehr.example/api/fhir: the browser posts to /api/oauth/authorize,
    # so a cookie for /oauth would never come back and every login would fail its CSRF check
    client, _ = await accounts.create_client(db, "App", [REDIRECT], ["user/*.rs"], public=True)
    proxied = await app_with(public_base_url="https://ehr.example/api/fhir")
    _, challenge = pkce()
    request = _request(client.client_id, challenge, scope="user/*.rs", aud="https://ehr.example/api/fhir")
    page = await proxied.get("http://testserver/oauth/authorize", params=request)
    assert page.status_code == 200, page.text
    (login,) = parse_forms(page.text)
    assert login.action == "https://ehr.example/api/oauth/authorize"
    assert "Path=/api/oauth" in page.headers["set-cookie"]


async def test_the_pages_escape_the_client_name_state_and_scopes(app, db):
    evil = '<script>alert(1)</script>"'
    client, _ = await accounts.create_client(db, evil, [REDIRECT], ["user/*.rs", "launch/patient"], public=True)
    user = await accounts.create_user(db, unique("dr"), PASSWORD, "Practitioner/7")
    _, challenge = pkce()
    request = _request(client.client_id, challenge, scope="user/*.rs <img src=x onerror=alert(1)>", state=evil)
    async with http(app) as browser:
        login = await browser.get("/oauth/authorize", params=request)
        consent = await _sign_in(browser, request, user.username)
    for page in (login, consent):
        assert page.status_code == 200, page.text
        assert "<script>" not in page.text and "<img" not in page.text
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
