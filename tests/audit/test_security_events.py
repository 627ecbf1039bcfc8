"""Sign-ins, authorizations, token grants and refusals, introspection, revocation and admin
changes each leave an R4 AuditEvent (IHE BALP / IUA), found through GET /fhir/AuditEvent,
and none of them holds a password, secret, code, verifier, assertion or token."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import orjson
import pytest

from headless_ehr.audit.chain import verify
from headless_ehr.auth import accounts
from headless_ehr.cli import main
from tests.auth.forge import assertion_token, client_assertion, client_key, key_client
from tests.auth.oauth_support import FHIR, basic, http, parse_forms, pkce, submit, unique
from tests.conftest import bearer, mint_token

DCM = "http://dicom.nema.org/resources/ontology/DCM"
IHE = "urn:ihe:event-type-code"
REDIRECT = "https://app.example/callback"
PASSWORD = "correct horse battery staple"
PROXIED = {"X-Forwarded-For": "203.0.113.41"}  # the client behind a trusted proxy (the test peer, 127.0.0.1)


async def audit(app: Any, client: httpx.AsyncClient, **params: str) -> list[dict]:
    """The AuditEvents an admin finds with these search parameters, oldest first."""
    await app.state.audit.flush()
    response = await client.get("/AuditEvent", params={**params, "_count": "100"})
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", [])]


async def all_content(app: Any, db: asyncpg.Pool, since: int) -> bytes:
    """Every audit record appended after seq `since`, as one byte string."""
    await app.state.audit.flush()
    rows = await db.fetch("SELECT content FROM audit_event WHERE seq > $1", since)
    return b"\n".join(bytes(r["content"]) for r in rows)


async def last_seq(app: Any, db: asyncpg.Pool) -> int:
    await app.state.audit.flush()
    return await db.fetchval("SELECT coalesce(max(seq), 0) FROM audit_event")


def code_of(coding: dict) -> tuple[str, str]:
    return coding["system"], coding["code"]


def subtype(event: dict) -> tuple[str, str]:
    [coding] = event["subtype"]
    return code_of(coding)


def detail(event: dict) -> dict[str, str]:
    return {d["type"]: d["valueString"] for e in event.get("entity", []) for d in e.get("detail", [])}


def requestor(event: dict) -> dict:
    [agent] = [a for a in event["agent"] if a["requestor"]]
    return agent


def agent_ids(event: dict) -> set[str]:
    found = set()
    for agent in event["agent"]:
        who = agent.get("who", {})
        if "identifier" in who:
            found.add(f"{who['identifier']['system']}|{who['identifier']['value']}")
        if "reference" in who:
            found.add(who["reference"])
    return found


def patients(event: dict) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", []) if e.get("role", {}).get("code") == "1"]


# ---- the app, the user and the browser ---------------------------------------------------


@pytest.fixture
async def smart_app(db) -> accounts.Client:
    scopes = ["launch/patient", "patient/*.rs", "openid", "fhirUser", "offline_access"]
    client, _ = await accounts.create_client(db, "Audited App", [REDIRECT], scopes, public=True)
    return client


@pytest.fixture
async def patient_id(client) -> str:
    pid = unique("pt")
    assert (await client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid})).status_code == 201
    return pid


@pytest.fixture
async def clinician(db, patient_id) -> accounts.User:
    return await accounts.create_user(db, unique("dr"), PASSWORD, "Practitioner/audit-7", ["doctor"], [patient_id])


def _authorize_params(client_id: str, challenge: str, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "launch/patient patient/*.rs openid fhirUser offline_access",
        "state": "st-1",
        "aud": FHIR,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    } | extra


async def _login(browser: httpx.AsyncClient, params: dict[str, str], username: str, password: str) -> httpx.Response:
    page = await browser.get("/oauth/authorize", params=params)
    assert page.status_code == 200, page.text
    (form,) = parse_forms(page.text)
    return await submit(browser, form, form.fill({"username": username, "password": password}))


async def _consent(browser: httpx.AsyncClient, page: httpx.Response, button: str) -> httpx.Response:
    assert page.status_code == 200, page.text
    (form,) = parse_forms(page.text)
    return await submit(browser, form, form.fill(button=button))


def _redirect_query(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 303, response.text
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


# ---- sign-in ---------------------------------------------------------------------------------


async def test_a_sign_in_records_a_login_by_the_user_from_their_address(app, client, smart_app, clinician):
    _, challenge = pkce()
    async with http(app, headers=PROXIED) as browser:
        page = await _login(browser, _authorize_params(smart_app.client_id, challenge), clinician.username, PASSWORD)
    assert page.status_code == 200
    [event] = await audit(app, client, agent=f"urn:ehr:username|{clinician.username}", subtype="110122")
    assert code_of(event["type"]) == (DCM, "110114")
    assert subtype(event) == (DCM, "110122")
    assert (event["action"], event["outcome"]) == ("E", "0")
    user = requestor(event)
    assert user["who"]["reference"] == "Practitioner/audit-7"
    assert user["who"]["identifier"] == {"system": "urn:ehr:username", "value": clinician.username}
    assert user["network"]["address"] == "203.0.113.41"
    assert f"urn:ehr:client-id|{smart_app.client_id}" in agent_ids(event)  # the app signed in to


async def test_a_wrong_password_records_a_failed_login_without_the_password(app, client, db, smart_app, clinician):
    since = await last_seq(app, db)
    _, challenge = pkce()
    wrong = f"not-it-{uuid.uuid4().hex}"
    async with http(app) as browser:
        page = await _login(browser, _authorize_params(smart_app.client_id, challenge), clinician.username, wrong)
    assert page.status_code == 401
    [event] = await audit(app, client, agent=clinician.username, subtype="110122")
    assert event["outcome"] == "4" and event["outcomeDesc"].startswith("401 ")
    assert "reference" not in requestor(event)["who"]  # not signed in: the username tried, nobody known
    assert wrong.encode() not in await all_content(app, db, since)


async def test_sign_ins_of_a_locked_username_record_failed_logins(app, client, smart_app):
    username = unique("nobody")
    _, challenge = pkce()
    async with http(app) as browser:
        for _ in range(11):  # 10 failures lock the username: the 11th is throttled
            page = await _login(browser, _authorize_params(smart_app.client_id, challenge), username, "guess-guess")
    assert page.status_code == 429
    events = await audit(app, client, agent=f"urn:ehr:username|{username}")
    assert [e["outcomeDesc"][:3] for e in events] == ["401"] * 10 + ["429"]
    assert all(e["outcome"] == "4" and subtype(e) == (DCM, "110122") for e in events)


# ---- authorization and tokens ------------------------------------------------------------------


async def test_an_authorization_code_flow_records_the_authorization_and_each_grant(
    app, client, db, smart_app, clinician, patient_id
):
    since = await last_seq(app, db)
    verifier, challenge = pkce()
    async with http(app) as browser:
        page = await _login(browser, _authorize_params(smart_app.client_id, challenge), clinician.username, PASSWORD)
        code = _redirect_query(await _consent(browser, page, "allow"))["code"]
    async with http(app, headers=PROXIED) as app_backend:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
        form |= {"code_verifier": verifier, "client_id": smart_app.client_id}
        issued = (await app_backend.post("/oauth/token", data=form)).json()
        refresh = {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
        refreshed = (await app_backend.post("/oauth/token", data=refresh | {"client_id": smart_app.client_id})).json()
    events = await audit(app, client, agent=clinician.username, subtype=f"{IHE}|ITI-71")
    authorization, grant, renewal = events
    for event in events:
        assert code_of(event["type"]) == (DCM, "110114") and subtype(event) == (IHE, "ITI-71")
        assert (event["action"], event["outcome"]) == ("E", "0")
        assert {f"urn:ehr:client-id|{smart_app.client_id}", "Practitioner/audit-7"} <= agent_ids(event)
        assert patients(event) == [f"Patient/{patient_id}"]
    assert detail(authorization)["endpoint"] == "authorize"
    assert requestor(authorization)["who"]["reference"] == "Practitioner/audit-7"  # the browser asked
    assert detail(grant) == {"endpoint": "token", "grant_type": "authorization_code", "scope": issued["scope"]}
    assert detail(renewal)["grant_type"] == "refresh_token"
    app_agent = requestor(grant)  # the app's backend asked for the token
    assert app_agent["who"]["identifier"]["value"] == smart_app.client_id
    assert app_agent["network"]["address"] == "203.0.113.41"
    # the token is named by its id, never itself
    jti = app.state.tokens.decode(issued["access_token"], FHIR)["jti"]
    assert any(e.get("what", {}).get("identifier", {}).get("value") == jti for e in grant["entity"])
    recorded = await all_content(app, db, since)
    for secret in (code, verifier, issued["access_token"], issued["refresh_token"], issued["id_token"]):
        assert secret.encode() not in recorded
    for secret in (refreshed["access_token"], refreshed["refresh_token"], PASSWORD):
        assert secret.encode() not in recorded


async def test_a_refused_code_exchange_is_recorded_as_a_failure(app, client, smart_app, clinician):
    _, challenge = pkce()
    async with http(app) as browser:
        page = await _login(browser, _authorize_params(smart_app.client_id, challenge), clinician.username, PASSWORD)
        code = _redirect_query(await _consent(browser, page, "allow"))["code"]
    async with http(app) as app_backend:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
        form |= {"code_verifier": "x" * 43, "client_id": smart_app.client_id}
        assert (await app_backend.post("/oauth/token", data=form)).status_code == 400
    [refused] = [
        e
        for e in await audit(app, client, agent=smart_app.client_id, subtype="ITI-71", outcome="4")
        if detail(e).get("grant_type") == "authorization_code"
    ]
    assert refused["outcomeDesc"].startswith("400 invalid_grant: code_verifier")
    assert patients(refused) == []  # no token, no patient context granted


async def test_client_credentials_grants_and_a_wrong_secret_are_recorded(app, client, db):
    since = await last_seq(app, db)
    client_id, secret = await accounts.create_client(db, unique("svc"), [], ["system/Patient.rs"])
    secret = secret or ""
    client_id = client_id.client_id
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs"}
    async with http(app) as service:
        assert (await service.post("/oauth/token", data=form, headers=basic(client_id, secret))).status_code == 200
        wrong = basic(client_id, "wrong-secret-" + uuid.uuid4().hex)
        assert (await service.post("/oauth/token", data=form, headers=wrong)).status_code == 401
    granted, refused = await audit(app, client, agent=f"urn:ehr:client-id|{client_id}", subtype="ITI-71")
    assert granted["outcome"] == "0" and detail(granted)["scope"] == "system/Patient.rs"
    assert detail(granted)["grant_type"] == "client_credentials"
    assert [a["who"]["identifier"]["value"] for a in granted["agent"]] == [client_id]  # no user
    assert refused["outcome"] == "4" and refused["outcomeDesc"].startswith("401 invalid_client")
    recorded = await all_content(app, db, since)
    assert secret.encode() not in recorded and wrong["Authorization"].split()[1].encode() not in recorded


async def test_a_backend_service_assertion_grant_is_recorded_without_the_assertion(app, client, db):
    since = await last_seq(app, db)
    key = client_key("ES384")
    client_id = await key_client(db, key)
    assertion = client_assertion(key, "ES384", client_id)
    assert (await assertion_token(app, assertion)).status_code == 200
    [event] = await audit(app, client, agent=client_id, subtype="ITI-71")
    assert event["outcome"] == "0" and detail(event)["grant_type"] == "client_credentials"
    assert assertion.encode() not in await all_content(app, db, since)


async def test_introspection_and_revocation_are_recorded(app, client, db):
    since = await last_seq(app, db)
    client_id, secret = await accounts.create_client(db, unique("svc"), [], ["system/*.rs"])
    client_id, secret = client_id.client_id, secret or ""
    async with http(app, headers=basic(client_id, secret)) as service:
        token = (await service.post("/oauth/token", data={"grant_type": "client_credentials"})).json()["access_token"]
        assert (await service.post("/oauth/introspect", data={"token": token})).json()["active"] is True
        assert (await service.post("/oauth/revoke", data={"token": token})).status_code == 200
        assert (await service.post("/oauth/introspect", data={"token": token})).json()["active"] is False
    events = await audit(app, client, agent=client_id)
    grant, active, revoked, inactive = events
    assert subtype(active) == (IHE, "ITI-102") and detail(active)["active"] == "true"
    assert subtype(revoked) == (DCM, "110123") and detail(revoked)["revoked"] == "access token"
    assert subtype(inactive) == (IHE, "ITI-102") and detail(inactive)["active"] == "false"
    assert all(e["outcome"] == "0" for e in events)
    token_ids = [e["what"]["identifier"]["value"] for e in revoked["entity"] if "what" in e]
    assert token_ids and token_ids == [e["what"]["identifier"]["value"] for e in grant["entity"] if "what" in e]
    assert token.encode() not in await all_content(app, db, since)


# ---- refusals at the authorization endpoint ---------------------------------------------------


async def test_an_unknown_client_at_the_authorization_endpoint_is_recorded(app, client):
    claimed = unique("ghost")
    _, challenge = pkce()
    async with http(app) as browser:
        assert (await browser.get("/oauth/authorize", params=_authorize_params(claimed, challenge))).status_code == 400
    [event] = await audit(app, client, agent=claimed)
    assert subtype(event) == (IHE, "ITI-71") and event["outcome"] == "4"
    assert "not registered" in event["outcomeDesc"] and detail(event)["endpoint"] == "authorize"


async def test_a_redirect_uri_not_registered_is_recorded(app, client, smart_app):
    _, challenge = pkce()
    params = _authorize_params(smart_app.client_id, challenge, redirect_uri="https://evil.example/cb")
    async with http(app) as browser:
        assert (await browser.get("/oauth/authorize", params=params)).status_code == 400
    [event] = await audit(app, client, agent=smart_app.client_id, outcome="4")
    assert "redirect_uri" in event["outcomeDesc"]


async def test_a_user_denying_consent_is_recorded_as_a_refusal_by_that_user(app, client, smart_app, clinician):
    _, challenge = pkce()
    async with http(app) as browser:
        page = await _login(browser, _authorize_params(smart_app.client_id, challenge), clinician.username, PASSWORD)
        assert _redirect_query(await _consent(browser, page, "deny"))["error"] == "access_denied"
    [event] = await audit(app, client, agent=clinician.username, subtype="ITI-71")
    assert event["outcome"] == "4" and event["outcomeDesc"].startswith("403 access_denied")
    assert requestor(event)["who"]["reference"] == "Practitioner/audit-7"


# ---- the admin API ---------------------------------------------------------------------------


def _admin_id(app: Any) -> str:
    from headless_ehr.auth.bootstrap import admin_client_file

    return orjson.loads(admin_client_file(app.state.settings.data_dir).read_bytes())["client_id"]


@pytest.fixture
async def admin(app: Any) -> Any:
    admin_id = _admin_id(app)
    headers = bearer(mint_token(app, "system/*.*", client_id=admin_id, subject=admin_id))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers=headers
    ) as c:
        c.client_id = admin_id  # type: ignore[attr-defined]
        yield c


async def test_admin_changes_to_a_user_are_recorded_with_the_account_changed(app, client, db, admin):
    since = await last_seq(app, db)
    username, password = unique("nurse"), "s3cret-" + uuid.uuid4().hex
    made = await admin.post("/admin/users", json={"username": username, "password": password})
    assert made.status_code == 201
    assert (await admin.patch(f"/admin/users/{username}", json={"enabled": False})).status_code == 200
    assert (await admin.delete(f"/admin/users/{username}")).status_code == 204
    events = await audit(app, client, entity=f"urn:ehr:admin:users/{username}")
    assert [e["action"] for e in events] == ["C", "U", "D"]
    for event in events:
        assert code_of(event["type"]) == (DCM, "110113") and subtype(event) == (DCM, "110137")
        assert event["outcome"] == "0"
        assert requestor(event)["who"]["identifier"]["value"] == admin.client_id
        assert requestor(event)["network"]["address"] == "127.0.0.1"
    assert detail(events[1]) == {"enabled": "false"}
    assert password.encode() not in await all_content(app, db, since)


async def test_an_access_policy_change_is_recorded_as_a_security_roles_change(app, client, admin):
    name = unique("ward")
    assert (await admin.post("/admin/policies", json={"name": name, "rules": []})).status_code == 201
    assert (await admin.put(f"/admin/policies/{name}", json={"rules": []})).status_code == 200
    created, changed = await audit(app, client, entity=f"urn:ietf:rfc:3986|urn:ehr:admin:policies/{name}")
    assert subtype(created) == (DCM, "110136") and (created["action"], changed["action"]) == ("C", "U")
    assert detail(changed) == {"version": "2"}


async def test_an_ehr_launch_is_recorded_for_its_patient_without_the_launch_value(app, client, db, admin, patient_id):
    since = await last_seq(app, db)
    launch = (await admin.post("/admin/launch", json={"patient": patient_id})).json()["launch"]
    [event] = await audit(app, client, patient=patient_id, subtype="110132")
    assert event["action"] == "C" and patients(event) == [f"Patient/{patient_id}"]
    assert launch.encode() not in await all_content(app, db, since)


async def test_refused_admin_requests_are_recorded(app, client, admin):
    outsider = unique("outsider")
    headers = bearer(mint_token(app, "system/*.*", client_id=outsider, subject=outsider))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        assert (await c.get("/admin/users", headers=headers)).status_code == 403
        assert (await c.post("/admin/users", json={}, headers={"X-Forwarded-For": "198.51.100.77"})).status_code == 401
    bad = unique("bad")
    assert (await admin.post("/admin/users", json={"username": bad, "password": "short"})).status_code == 400
    [forbidden] = await audit(app, client, agent=outsider)
    assert forbidden["outcome"] == "4" and forbidden["outcomeDesc"].startswith("403 ")
    [anonymous] = await audit(app, client, address="198.51.100.77")
    assert anonymous["outcomeDesc"].startswith("401 ") and "who" not in requestor(anonymous)
    refused = await audit(app, client, agent=admin.client_id, outcome="4")
    [invalid] = [e for e in refused if bad in str(e) or "password" in e["outcomeDesc"]]
    assert invalid["action"] == "C" and invalid["outcomeDesc"].startswith("400 ")


async def test_a_new_signing_key_is_recorded(app, client):
    await app.state.signing_keys.rotate_now()
    kid = app.state.signing_keys.signing.kid
    [event] = await audit(app, client, entity=f"urn:ehr:admin:keys/{kid}")
    assert subtype(event) == (DCM, "110129") and event["action"] == "U" and event["outcome"] == "0"


# ---- the FHIR API: a bad token --------------------------------------------------------------


@pytest.mark.parametrize("token", ["not-a-jwt", "expired"])
async def test_a_request_with_a_bad_token_is_recorded_as_refused_with_no_one_named(app, client, db, token):
    if token == "expired":
        token = mint_token(app, "system/*.*", lifetime=-60)
    marker = f"Patient/bad-token-{uuid.uuid4().hex[:12]}"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=FHIR) as c:
        assert (await c.get(f"/{marker}", headers=bearer(token))).status_code == 401
    [event] = await audit(app, client, entity=marker)
    assert event["outcome"] == "4" and event["outcomeDesc"].startswith("401 ")
    assert [a for a in event["agent"] if "who" in a] == []


# ---- the command line -------------------------------------------------------------------------


def test_ehr_user_create_is_recorded_with_the_operating_system_user(fresh_database, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EHR_DATABASE_URL", fresh_database)
    monkeypatch.setenv("EHR_DATA_DIR", str(tmp_path))
    username, password = unique("cli"), "cli-" + uuid.uuid4().hex
    assert main(["user", "create", "--username", username, "--password", password]) == 0
    capsys.readouterr()

    async def contents() -> list[bytes]:
        conn = await asyncpg.connect(fresh_database)
        try:
            assert (await verify(conn)).broken is None  # its search columns (entity identifiers) hold too
            return [bytes(r["content"]) for r in await conn.fetch("SELECT content FROM audit_event ORDER BY seq")]
        finally:
            await conn.close()

    [content] = asyncio.run(contents())
    event = orjson.loads(content)
    assert subtype(event) == (DCM, "110137") and event["action"] == "C" and event["outcome"] == "0"
    assert requestor(event)["who"]["identifier"]["system"] == "urn:ehr:os-user"
    assert [e["what"]["identifier"]["value"] for e in event["entity"]] == [f"urn:ehr:admin:users/{username}"]
    assert password.encode() not in content
