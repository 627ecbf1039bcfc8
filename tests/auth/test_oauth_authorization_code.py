"""A real SMART app over HTTP: authorization code + PKCE through the login, patient picker
and consent pages, the token on /fhir, then refresh; and the attacks on that flow."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from headless_ehr.auth import accounts, launch

from .oauth_support import FHIR, basic, http, parse_forms, pkce, submit, unique

REDIRECT = "https://app.example/callback"
PASSWORD = "correct horse battery"
SCOPES = ["launch/patient", "launch", "patient/*.rs", "openid", "fhirUser", "offline_access", "online_access"]


@pytest.fixture
async def patients(client) -> list[str]:
    ids = [unique("pt"), unique("pt")]
    for pid in ids:
        r = await client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid})
        assert r.status_code in (200, 201), r.text
    return ids


@pytest.fixture
async def app_client(db) -> accounts.Client:
    client, _ = await accounts.create_client(db, "Growth Chart", [REDIRECT], SCOPES, public=True)
    return client


@pytest.fixture
async def clinician(db, patients) -> accounts.User:
    return await accounts.create_user(db, unique("dr"), PASSWORD, "Practitioner/7", ["doctor"], patients)


def _request(
    client_id: str,
    challenge: str,
    scope: str = "launch/patient patient/*.rs openid fhirUser offline_access",
    **extra: str,
) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": "xyz-state",
        "aud": FHIR,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "nonce": "n-0S6",
    } | extra


def _query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def _sign_in(browser, request: dict[str, str], username: str) -> Any:
    page = await browser.get("/oauth/authorize", params=request)
    assert page.status_code == 200, page.text
    (login,) = parse_forms(page.text)
    assert {"username", "password", "csrf"} <= login.names()
    return await submit(browser, login, login.fill({"username": username, "password": PASSWORD}))


async def _code(
    app, request: dict[str, str], username: str, patient: str | None = None, granted: list[str] | None = None
) -> str:
    """The code the app receives after the user signs in, picks and allows."""
    async with http(app) as browser:
        page = await _sign_in(browser, request, username)
        forms = parse_forms(page.text)
        if patient is not None and "patient" in forms[0].names() and page.text.count('type="radio"'):
            page = await submit(browser, forms[0], forms[0].fill(patient=patient))
            forms = parse_forms(page.text)
        assert page.status_code == 200, page.text
        (consent,) = forms
        choose = {"granted": granted} if granted is not None else {}
        done = await submit(browser, consent, consent.fill(button="allow", **choose))
    assert done.status_code == 303, done.text
    assert done.headers["location"].startswith(REDIRECT + "?")
    query = _query(done.headers["location"])
    assert query["state"] == request["state"]
    return query["code"]


async def _exchange(app, client_id: str, code: str, verifier: str, redirect_uri: str = REDIRECT, headers=None):
    async with http(app) as c:
        return await c.post(
            "/oauth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
                "client_id": client_id,
            },
            headers=headers or {},
        )


async def _refresh(app, client_id: str, refresh: str, **extra: str):
    async with http(app) as c:
        return await c.post(
            "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": refresh, "client_id": client_id, **extra},
        )


async def test_a_smart_app_signs_in_picks_a_patient_reads_and_refreshes(app, app_client, clinician, patients):
    verifier, challenge = pkce()
    code = await _code(app, _request(app_client.client_id, challenge), clinician.username, patient=patients[1])
    r = await _exchange(app, app_client.client_id, code, verifier)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer" and body["patient"] == patients[1]
    assert set(body["scope"].split()) == {"launch/patient", "patient/*.rs", "openid", "fhirUser", "offline_access"}
    async with http(app, headers={"Authorization": f"Bearer {body['access_token']}"}) as c:
        read = await c.get(f"{FHIR}/Patient/{patients[1]}")
    assert read.status_code == 200, read.text
    # the ID token: signed by our keys, for this client, naming the user's FHIR record
    keys = KeySet.import_key_set(app.state.signing_keys.jwks())
    id_claims = jwt.decode(body["id_token"], keys, algorithms=["ES256"]).claims
    assert id_claims["aud"] == app_client.client_id and id_claims["iss"] == "http://testserver"
    assert id_claims["sub"] == clinician.username and id_claims["nonce"] == "n-0S6"
    assert id_claims["fhirUser"] == f"{FHIR}/Practitioner/7"
    # the access token carries the contract's claims
    claims = app.state.tokens.decode(body["access_token"], FHIR)
    assert claims["sub"] == clinician.username and claims["fhirUser"] == "Practitioner/7"
    assert (
        claims["patient"] == patients[1]
        and claims["roles"] == ["doctor"]
        and claims["client_id"] == app_client.client_id
    )
    # refresh: a new access token and a rotated refresh token, same context
    again = await _refresh(app, app_client.client_id, body["refresh_token"])
    assert again.status_code == 200, again.text
    assert again.json()["patient"] == patients[1] and again.json()["refresh_token"] != body["refresh_token"]
    async with http(app, headers={"Authorization": f"Bearer {again.json()['access_token']}"}) as c:
        assert (await c.get(f"{FHIR}/Patient/{patients[1]}")).status_code == 200


async def test_a_user_may_grant_fewer_scopes_than_asked(app, app_client, clinician, patients):
    verifier, challenge = pkce()
    request = _request(app_client.client_id, challenge)
    code = await _code(
        app, request, clinician.username, patient=patients[0], granted=["launch/patient", "patient/*.rs"]
    )
    body = (await _exchange(app, app_client.client_id, code, verifier)).json()
    assert body["scope"] == "launch/patient patient/*.rs"
    assert "refresh_token" not in body and "id_token" not in body


async def test_scopes_the_client_may_not_have_are_not_offered(app, db, clinician, patients):
    client, _ = await accounts.create_client(
        db, "narrow", [REDIRECT], ["launch/patient", "patient/Observation.rs"], public=True
    )
    verifier, challenge = pkce()
    code = await _code(app, _request(client.client_id, challenge), clinician.username, patient=patients[0])
    assert (await _exchange(app, client.client_id, code, verifier)).json()["scope"] == "launch/patient"


async def test_a_patient_user_gets_their_own_record_without_a_picker(app, app_client, db, patients):
    user = await accounts.create_user(db, unique("pat"), PASSWORD, f"Patient/{patients[0]}")
    verifier, challenge = pkce()
    async with http(app) as browser:
        page = await _sign_in(browser, _request(app_client.client_id, challenge), user.username)
        assert 'type="radio"' not in page.text and f"Patient/{patients[0]}" in page.text
        (consent,) = parse_forms(page.text)
        done = await submit(browser, consent, consent.fill(button="allow"))
    body = (await _exchange(app, app_client.client_id, _query(done.headers["location"])["code"], verifier)).json()
    assert body["patient"] == patients[0]


async def test_an_ehr_launch_gives_the_launch_context(app, app_client, clinician, patients, db):
    context = await launch.create_launch(db, patients[1], "enc-1", "admin")
    verifier, challenge = pkce()
    request = _request(app_client.client_id, challenge, scope="launch patient/*.rs", launch=context.launch_id)
    code = await _code(app, request, clinician.username)
    body = (await _exchange(app, app_client.client_id, code, verifier)).json()
    assert body["patient"] == patients[1] and body["encounter"] == "enc-1"


async def test_an_unknown_launch_is_an_error_sent_to_the_app(app, app_client):
    _, challenge = pkce()
    async with http(app) as browser:
        r = await browser.get(
            "/oauth/authorize",
            params=_request(app_client.client_id, challenge, scope="launch patient/*.rs", launch="nope"),
        )
    assert r.status_code == 302 and _query(r.headers["location"])["error"] == "invalid_request"


async def test_the_authorization_request_may_be_posted(app, app_client, clinician):
    _, challenge = pkce()
    async with http(app) as browser:
        r = await browser.post(
            "/oauth/authorize",
            content=urlencode(_request(app_client.client_id, challenge)),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert r.status_code == 200 and {"username", "password"} <= parse_forms(r.text)[0].names()


async def test_a_signed_in_browser_skips_the_login(app, app_client, clinician, patients):
    _, challenge = pkce()
    async with http(app) as browser:
        page = await _sign_in(browser, _request(app_client.client_id, challenge), clinician.username)
        assert "patient" in parse_forms(page.text)[0].names()
        again = await browser.get("/oauth/authorize", params=_request(app_client.client_id, challenge))
    assert again.status_code == 200 and "password" not in parse_forms(again.text)[0].names()


async def test_the_session_cookie_is_httponly_and_samesite_lax(app, app_client, clinician):
    _, challenge = pkce()
    async with http(app) as browser:
        r = await browser.get("/oauth/authorize", params=_request(app_client.client_id, challenge))
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie


async def test_the_pages_are_accessible_forms_with_labels(app, app_client, clinician, patients):
    _, challenge = pkce()
    async with http(app) as browser:
        page = await _sign_in(browser, _request(app_client.client_id, challenge), clinician.username)
    (picker,) = parse_forms(page.text)
    radios = [i for i in picker.inputs if i.get("type") == "radio"]
    assert len(radios) == 2 and all(picker.labels.get(r["id"]) for r in radios)
    assert '<html lang="en">' in page.text
    assert all(external not in page.text for external in ("<script", "<link", "src=", "url("))


async def test_the_consent_page_lists_the_scopes_in_words(app, app_client, clinician, patients):
    _, challenge = pkce()
    async with http(app) as browser:
        page = await _sign_in(browser, _request(app_client.client_id, challenge), clinician.username)
        (picker,) = parse_forms(page.text)
        consent_page = await submit(browser, picker, picker.fill(patient=patients[0]))
    (consent,) = parse_forms(consent_page.text)
    words = " ".join(consent.labels.values())
    assert "Read and search all records of the selected patient" in words
    assert "Know who you are" in words


async def test_a_wrong_password_shows_the_login_again(app, app_client, clinician):
    _, challenge = pkce()
    async with http(app) as browser:
        page = await browser.get("/oauth/authorize", params=_request(app_client.client_id, challenge))
        (login,) = parse_forms(page.text)
        r = await submit(browser, login, login.fill({"username": clinician.username, "password": "wrong password"}))
    assert r.status_code == 401 and 'role="alert"' in r.text and "password" in parse_forms(r.text)[0].names()


async def test_a_form_without_the_csrf_token_is_refused(app, app_client, clinician):
    _, challenge = pkce()
    async with http(app) as browser:
        page = await browser.get("/oauth/authorize", params=_request(app_client.client_id, challenge))
        (login,) = parse_forms(page.text)
        forged = login.fill({"username": clinician.username, "password": PASSWORD, "csrf": "forged"})
        r = await submit(browser, login, forged)
    assert r.status_code == 403 and "Set-Cookie" not in r.headers


async def test_a_form_posted_from_another_browser_is_refused(app, app_client, clinician):
    """The CSRF token belongs to the cookie of the browser it was shown to."""
    _, challenge = pkce()
    async with http(app) as victim, http(app) as attacker:
        page = await attacker.get("/oauth/authorize", params=_request(app_client.client_id, challenge))
        (login,) = parse_forms(page.text)
        await victim.get("/oauth/authorize", params=_request(app_client.client_id, challenge))
        r = await submit(victim, login, login.fill({"username": clinician.username, "password": PASSWORD}))
    assert r.status_code == 403


async def test_denying_sends_access_denied_to_the_app(app, app_client, clinician, patients):
    _, challenge = pkce()
    async with http(app) as browser:
        page = await _sign_in(browser, _request(app_client.client_id, challenge), clinician.username)
        (picker,) = parse_forms(page.text)
        page = await submit(browser, picker, picker.fill(patient=patients[0]))
        (consent,) = parse_forms(page.text)
        r = await submit(browser, consent, consent.fill(button="deny"))
    assert r.status_code == 303 and _query(r.headers["location"]) | {} == {
        "error": "access_denied",
        "error_description": "the user did not allow the application",
        "state": "xyz-state",
    }


async def test_picking_a_patient_the_user_may_not_act_for_is_refused(app, app_client, clinician, patients):
    _, challenge = pkce()
    async with http(app) as browser:
        page = await _sign_in(browser, _request(app_client.client_id, challenge), clinician.username)
        (picker,) = parse_forms(page.text)
        body = picker.fill() + "&patient=someone-else"
        r = await submit(browser, picker, body)
    assert r.status_code == 400


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": None}, "invalid_request"),
        ({"aud": "https://other.example/fhir"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "patient/Observation.bogus"}, "invalid_scope"),
        ({"scope": "user/*.rs"}, "invalid_scope"),
        ({"state": None}, "invalid_request"),
    ],
)
async def test_bad_requests_are_errors_redirected_to_the_app(app, app_client, change, error):
    _, challenge = pkce()
    request = {k: v for k, v in (_request(app_client.client_id, challenge) | change).items() if v is not None}
    async with http(app) as browser:
        r = await browser.get("/oauth/authorize", params=request)
    assert r.status_code == 302, r.text
    assert r.headers["location"].startswith(REDIRECT + "?")
    assert _query(r.headers["location"])["error"] == error


@pytest.mark.parametrize(
    "change",
    [
        {"redirect_uri": "https://evil.example/callback"},
        {"redirect_uri": REDIRECT + "/"},
        {"redirect_uri": None},
        {"client_id": "unknown"},
    ],
)
async def test_an_untrusted_redirect_uri_or_client_is_shown_not_redirected(app, app_client, change):
    _, challenge = pkce()
    request = {k: v for k, v in (_request(app_client.client_id, challenge) | change).items() if v is not None}
    async with http(app) as browser:
        r = await browser.get("/oauth/authorize", params=request)
    assert r.status_code == 400 and "location" not in r.headers and "text/html" in r.headers["content-type"]


# ---- attacks on the code and refresh token --------------------------------------------------


async def test_a_reused_code_is_refused(app, app_client, clinician, patients):
    verifier, challenge = pkce()
    code = await _code(app, _request(app_client.client_id, challenge), clinician.username, patient=patients[0])
    first = await _exchange(app, app_client.client_id, code, verifier)
    assert first.status_code == 200
    second = await _exchange(app, app_client.client_id, code, verifier)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
    # and the refresh tokens the code gave are revoked with it
    assert (await _refresh(app, app_client.client_id, first.json()["refresh_token"])).status_code == 400


async def test_a_wrong_pkce_verifier_is_refused(app, app_client, clinician, patients):
    _, challenge = pkce()
    other_verifier, _ = pkce()
    code = await _code(app, _request(app_client.client_id, challenge), clinician.username, patient=patients[0])
    r = await _exchange(app, app_client.client_id, code, other_verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


async def test_a_wrong_redirect_uri_at_the_token_endpoint_is_refused(app, app_client, clinician, patients):
    verifier, challenge = pkce()
    code = await _code(app, _request(app_client.client_id, challenge), clinician.username, patient=patients[0])
    r = await _exchange(app, app_client.client_id, code, verifier, redirect_uri="https://app.example/other")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


async def test_a_code_redeemed_by_another_client_is_refused(app, app_client, clinician, patients, db):
    other, _ = await accounts.create_client(db, "other", [REDIRECT], SCOPES, public=True)
    verifier, challenge = pkce()
    code = await _code(app, _request(app_client.client_id, challenge), clinician.username, patient=patients[0])
    r = await _exchange(app, other.client_id, code, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


async def test_an_expired_code_is_refused(app, app_client, clinician, patients, db):
    verifier, challenge = pkce()
    code = await _code(app, _request(app_client.client_id, challenge), clinician.username, patient=patients[0])
    await db.execute(
        "UPDATE auth_code SET expires_at = now() - interval '1 second' WHERE client_id = $1", app_client.client_id
    )
    r = await _exchange(app, app_client.client_id, code, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


async def test_codes_are_stored_as_digests(app, app_client, clinician, patients, db):
    _, challenge = pkce()
    code = await _code(app, _request(app_client.client_id, challenge), clinician.username, patient=patients[0])
    assert await db.fetchval("SELECT count(*) FROM auth_code WHERE code_hash = $1", code) == 0


async def test_a_confidential_client_must_authenticate_to_redeem(app, db, clinician, patients):
    client, secret = await accounts.create_client(db, "conf", [REDIRECT], SCOPES)
    verifier, challenge = pkce()
    code = await _code(app, _request(client.client_id, challenge), clinician.username, patient=patients[0])
    unauthenticated = await _exchange(app, client.client_id, code, verifier)
    assert unauthenticated.status_code == 401 and unauthenticated.json()["error"] == "invalid_client"
    code = await _code(app, _request(client.client_id, challenge), clinician.username, patient=patients[0])
    assert (
        await _exchange(app, client.client_id, code, verifier, headers=basic(client.client_id, secret))
    ).status_code == 200


async def _refreshable(app, app_client, clinician, patients) -> dict[str, Any]:
    verifier, challenge = pkce()
    code = await _code(app, _request(app_client.client_id, challenge), clinician.username, patient=patients[0])
    return (await _exchange(app, app_client.client_id, code, verifier)).json()


async def test_a_reused_refresh_token_revokes_its_family(app, app_client, clinician, patients):
    first = await _refreshable(app, app_client, clinician, patients)
    second = (await _refresh(app, app_client.client_id, first["refresh_token"])).json()
    reused = await _refresh(app, app_client.client_id, first["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    # the rotated token, which the thief or the app holds, is dead too
    later = await _refresh(app, app_client.client_id, second["refresh_token"])
    assert later.status_code == 400 and later.json()["error"] == "invalid_grant"


async def test_a_refresh_may_narrow_but_not_widen_the_scope(app, app_client, clinician, patients):
    first = await _refreshable(app, app_client, clinician, patients)
    wider = await _refresh(app, app_client.client_id, first["refresh_token"], scope="patient/*.rs user/*.rs")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    narrower = await _refresh(app, app_client.client_id, first["refresh_token"], scope="patient/Observation.rs")
    assert narrower.status_code == 200 and narrower.json()["scope"] == "patient/Observation.rs"
    # the rotated refresh token keeps the original grant
    again = await _refresh(app, app_client.client_id, narrower.json()["refresh_token"])
    assert "patient/*.rs" in again.json()["scope"].split()


async def test_a_refresh_token_belongs_to_its_client(app, app_client, clinician, patients, db):
    other, _ = await accounts.create_client(db, "other", [REDIRECT], SCOPES, public=True)
    first = await _refreshable(app, app_client, clinician, patients)
    r = await _refresh(app, other.client_id, first["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # the failed attempt did not spend it
    assert (await _refresh(app, app_client.client_id, first["refresh_token"])).status_code == 200


async def test_a_disabled_user_cannot_refresh(app, app_client, clinician, patients, db):
    first = await _refreshable(app, app_client, clinician, patients)
    await accounts.disable_user(db, clinician.username)
    r = await _refresh(app, app_client.client_id, first["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


async def test_revoking_a_refresh_token_revokes_its_family(app, app_client, clinician, patients):
    first = await _refreshable(app, app_client, clinician, patients)
    second = (await _refresh(app, app_client.client_id, first["refresh_token"])).json()
    async with http(app) as c:
        r = await c.post("/oauth/revoke", data={"token": second["refresh_token"], "client_id": app_client.client_id})
    assert r.status_code == 200
    assert (await _refresh(app, app_client.client_id, second["refresh_token"])).json()["error"] == "invalid_grant"


async def test_introspection_describes_a_live_refresh_token_and_not_a_spent_one(
    app, app_client, clinician, patients, db
):
    first = await _refreshable(app, app_client, clinician, patients)
    admin, secret = await accounts.create_client(db, "admin", scopes=["system/*.*"], admin=True)
    async with http(app) as c:
        live = await c.post(
            "/oauth/introspect", data={"token": first["refresh_token"]}, headers=basic(admin.client_id, secret)
        )
        assert live.json()["active"] is True and live.json()["client_id"] == app_client.client_id
        assert live.json()["username"] == clinician.username
        await _refresh(app, app_client.client_id, first["refresh_token"])
        spent = await c.post(
            "/oauth/introspect", data={"token": first["refresh_token"]}, headers=basic(admin.client_id, secret)
        )
    assert spent.json() == {"active": False}


async def test_a_disabled_client_cannot_redeem_or_refresh(app, app_client, clinician, patients, db):
    first = await _refreshable(app, app_client, clinician, patients)
    await accounts.disable_client(db, app_client.client_id)
    r = await _refresh(app, app_client.client_id, first["refresh_token"])
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


async def test_the_session_cookie_is_secure_over_https(app, app_client):
    _, challenge = pkce()
    async with http(app) as browser:
        r = await browser.get(
            "https://testserver/oauth/authorize",
            params=_request(app_client.client_id, challenge, aud="https://testserver/fhir"),
        )
    assert r.status_code == 200 and "secure" in r.headers["set-cookie"].lower()
    assert 'action="https://testserver/oauth/authorize"' in r.text
