# ruff: noqa: F811 (the authorization-code fixtures are imported, and named as parameters)
"""Purpose of use through the SMART flow: asked on the authorization request, carried by
the code into the access and refreshed tokens; BTG only for a user whose policy allows it."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from tests.auth.oauth_support import http, parse_forms, pkce, submit
from tests.auth.test_oauth_authorization_code import (  # noqa: F401 (fixtures)
    FHIR,
    REDIRECT,
    _code,
    _exchange,
    _refresh,
    _request,
    _sign_in,
    app_client,
    clinician,
    patients,
)


async def test_the_purpose_asked_for_at_authorization_is_in_the_access_and_refreshed_tokens(
    app, app_client, clinician, patients
):
    verifier, challenge = pkce()
    request = _request(app_client.client_id, challenge, purpose_of_use="TREAT ETREAT")
    code = await _code(app, request, clinician.username, patient=patients[0])
    r = await _exchange(app, app_client.client_id, code, verifier)
    assert r.status_code == 200, r.text
    assert app.state.tokens.decode(r.json()["access_token"], FHIR)["purpose_of_use"] == ["TREAT", "ETREAT"]
    again = await _refresh(app, app_client.client_id, r.json()["refresh_token"])
    assert again.status_code == 200, again.text
    assert app.state.tokens.decode(again.json()["access_token"], FHIR)["purpose_of_use"] == ["TREAT", "ETREAT"]


async def test_a_token_request_may_name_another_purpose(app, app_client, clinician, patients):
    verifier, challenge = pkce()
    code = await _code(app, _request(app_client.client_id, challenge), clinician.username, patient=patients[0])
    r = await _exchange(app, app_client.client_id, code, verifier)
    refreshed = await _refresh(app, app_client.client_id, r.json()["refresh_token"], purpose_of_use="HRESCH")
    assert refreshed.status_code == 200, refreshed.text
    assert app.state.tokens.decode(refreshed.json()["access_token"], FHIR)["purpose_of_use"] == ["HRESCH"]


async def test_an_unknown_purpose_is_an_invalid_request_sent_to_the_app(app, app_client):
    _, challenge = pkce()
    async with http(app) as browser:
        r = await browser.get(
            "/oauth/authorize", params=_request(app_client.client_id, challenge, purpose_of_use="XYZ")
        )
    assert r.status_code == 302, r.text
    assert parse_qs(urlsplit(r.headers["location"]).query)["error"] == ["invalid_request"]


async def test_break_the_glass_is_refused_to_a_user_whose_policy_does_not_allow_it(
    app, app_client, clinician, patients
):
    _, challenge = pkce()
    request = _request(app_client.client_id, challenge, purpose_of_use="BTG")
    async with http(app) as browser:
        page = await _sign_in(browser, request, clinician.username)
        forms = parse_forms(page.text)
        if "patient" in forms[0].names() and page.text.count('type="radio"'):
            page = await submit(browser, forms[0], forms[0].fill(patient=patients[0]))
            forms = parse_forms(page.text)
        (consent,) = forms
        done = await submit(browser, consent, consent.fill(button="allow"))
    assert done.status_code == 303, done.text
    assert done.headers["location"].startswith(REDIRECT + "?")
    query = parse_qs(urlsplit(done.headers["location"]).query)
    assert query["error"] == ["invalid_request"] and "code" not in query


async def test_a_refresh_asking_for_break_the_glass_without_the_policy_keeps_its_refresh_token(
    app, app_client, clinician, patients
):
    verifier, challenge = pkce()
    code = await _code(app, _request(app_client.client_id, challenge), clinician.username, patient=patients[0])
    refresh = (await _exchange(app, app_client.client_id, code, verifier)).json()["refresh_token"]
    refused = await _refresh(app, app_client.client_id, refresh, purpose_of_use="BTG")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"
    assert (await _refresh(app, app_client.client_id, refresh)).status_code == 200  # not spent
