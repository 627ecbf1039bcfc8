"""The CapabilityStatement names SMART on FHIR and its endpoints (App Launch 2.2 conformance)."""

from __future__ import annotations

from typing import Any

from headless_ehr.rest.capability import AUTH_OFF, OAUTH_URIS, SECURITY_SERVICE, capability_statement

SMART = {"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}


def _oauth_uris(statement: dict[str, Any]) -> dict[str, str]:
    security = statement["rest"][0]["security"]
    [ext] = [e for e in security["extension"] if e["url"] == OAUTH_URIS]
    return {e["url"]: e["valueUri"] for e in ext["extension"]}


async def test_metadata_names_the_smart_on_fhir_security_service(anonymous):
    response = await anonymous.get("/metadata")
    assert response.status_code == 200
    codings = [c for s in response.json()["rest"][0]["security"]["service"] for c in s["coding"]]
    assert any(c["system"] == SMART["system"] and c["code"] == SMART["code"] for c in codings)


async def test_metadata_gives_the_oauth_endpoints_at_the_request_origin(anonymous):
    uris = _oauth_uris((await anonymous.get("/metadata")).json())
    assert uris == {
        "authorize": "http://testserver/oauth/authorize",
        "token": "http://testserver/oauth/token",
        "introspect": "http://testserver/oauth/introspect",
        "revoke": "http://testserver/oauth/revoke",
        "register": "http://testserver/admin/clients",
    }


async def test_oauth_endpoints_follow_the_host_the_client_used(anonymous):
    """The statement is cached per base URL: a second host gets its own endpoints, not the first one's."""
    first = _oauth_uris((await anonymous.get("/metadata")).json())
    other = _oauth_uris((await anonymous.get("/metadata", headers={"Host": "ehr.example.org:8443"})).json())
    assert first["token"] == "http://testserver/oauth/token"
    assert other["token"] == "http://ehr.example.org:8443/oauth/token"


async def test_oauth_endpoints_follow_a_trusted_proxy(app_with):
    client = await app_with()
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "ehr.example.org"}
    # httpx's ASGI transport connects from 127.0.0.1, a trusted proxy by default
    uris = _oauth_uris((await client.get("/metadata", headers=headers)).json())
    assert uris["authorize"] == "https://ehr.example.org/oauth/authorize"


async def test_oauth_endpoints_are_under_the_public_base_url_origin(app_with):
    client = await app_with(public_base_url="https://ehr.example.org/fhir")
    uris = _oauth_uris((await client.get("/metadata")).json())
    assert uris["introspect"] == "https://ehr.example.org/oauth/introspect"


async def test_metadata_of_a_server_with_auth_does_not_warn(anonymous):
    statement = (await anonymous.get("/metadata")).json()
    assert "OFF" not in statement["rest"][0]["security"]["description"]
    assert "description" not in statement


async def test_metadata_names_a_trusted_issuer(app_with):
    client = await app_with(trusted_issuer="https://login.example.org/realms/ehr", trusted_audience="ehr")
    description = (await client.get("/metadata")).json()["rest"][0]["security"]["description"]
    assert "https://login.example.org/realms/ehr" in description


def test_a_statement_without_auth_says_so_and_names_no_security_service():
    # built directly: the only test serving with auth off is tests/auth/test_auth_off.py
    statement = capability_statement("http://127.0.0.1:8080/fhir", auth=False)
    assert statement["description"] == AUTH_OFF
    assert statement["rest"][0]["security"] == {"description": AUTH_OFF}


async def test_oauth_endpoints_keep_the_path_prefix_of_the_public_base_url(app_with):
    client = await app_with(public_base_url="https://ehr.example.org/api/fhir")
    uris = _oauth_uris((await client.get("/metadata")).json())
    assert uris["token"] == "https://ehr.example.org/api/oauth/token"
