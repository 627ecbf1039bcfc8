"""SMART configuration and OpenID Connect discovery: readable without a token, every URL
one the client can reach, every capability issue 10 lists."""

from __future__ import annotations

import pytest

from .oauth_support import FHIR, ORIGIN, http

CAPABILITIES = {
    "launch-standalone",
    "launch-ehr",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-standalone-patient",
    "context-ehr-patient",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "permission-offline",
    "sso-openid-connect",
    "authorize-post",
}


async def test_the_smart_configuration_lists_endpoints_and_capabilities(app):
    async with http(app) as c:
        r = await c.get("/fhir/.well-known/smart-configuration")
    assert r.status_code == 200
    body = r.json()
    assert body["issuer"] == ORIGIN
    assert body["authorization_endpoint"] == ORIGIN + "/oauth/authorize"
    assert body["token_endpoint"] == ORIGIN + "/oauth/token"
    assert body["introspection_endpoint"] == ORIGIN + "/oauth/introspect"
    assert body["revocation_endpoint"] == ORIGIN + "/oauth/revoke"
    assert body["registration_endpoint"] == ORIGIN + "/admin/clients"
    assert body["jwks_uri"] == ORIGIN + "/jwks"
    assert body["code_challenge_methods_supported"] == ["S256"]
    assert set(body["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "private_key_jwt"}
    assert set(body["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    assert body["response_types_supported"] == ["code"]
    assert {"openid", "fhirUser", "launch/patient", "offline_access", "system/*.rs"} <= set(body["scopes_supported"])
    assert set(body["capabilities"]) >= CAPABILITIES


@pytest.mark.parametrize("path", ["/.well-known/openid-configuration", "/fhir/.well-known/openid-configuration"])
async def test_the_openid_configuration_is_served_at_the_origin_and_the_fhir_base(app, path):
    async with http(app) as c:
        r = await c.get(path)
    assert r.status_code == 200
    body = r.json()
    assert body["issuer"] == ORIGIN and body["jwks_uri"] == ORIGIN + "/jwks"
    assert body["id_token_signing_alg_values_supported"] == ["ES256"]
    assert "fhirUser" in body["claims_supported"] and body["subject_types_supported"] == ["public"]


async def test_the_urls_follow_the_host_the_client_used(app):
    async with http(app) as c:
        r = await c.get("http://ehr.example:8443/fhir/.well-known/smart-configuration")
    assert r.json()["token_endpoint"] == "http://ehr.example:8443/oauth/token"


async def test_discovery_needs_no_token_but_fhir_does(app):
    async with http(app) as c:
        assert (await c.get("/fhir/.well-known/smart-configuration")).status_code == 200
        assert (await c.get(FHIR + "/Patient")).status_code == 401
