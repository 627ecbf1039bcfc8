"""Where clients learn how to get a token: SMART configuration (App Launch 2.2 §conformance)
and OpenID Connect discovery, built from the request's origin so every URL is one the
client can reach."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .oauth import OAuthError, error_response, fhir_base, issuer_of

CAPABILITIES = [
    "launch-standalone",
    "launch-ehr",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-standalone-patient",
    "context-ehr-patient",
    "context-ehr-encounter",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "permission-offline",
    "permission-online",
    "sso-openid-connect",
]
SCOPES = [
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "patient/*.read",
    "patient/*.write",
    "patient/*.*",
    "patient/*.cruds",
    "patient/*.rs",
    "user/*.read",
    "user/*.write",
    "user/*.*",
    "user/*.cruds",
    "user/*.rs",
    "system/*.read",
    "system/*.write",
    "system/*.*",
    "system/*.cruds",
    "system/*.rs",
]
GRANT_TYPES = ["authorization_code", "refresh_token", "client_credentials"]
AUTH_METHODS = ["client_secret_basic", "private_key_jwt"]
ASSERTION_ALGS = ["RS384", "ES384"]


def _endpoints(issuer: str) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/jwks",
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        "token_endpoint": f"{issuer}/oauth/token",
        "introspection_endpoint": f"{issuer}/oauth/introspect",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "registration_endpoint": f"{issuer}/admin/clients",
    }


async def smart_configuration(request: Request) -> Response:
    try:
        issuer = issuer_of(request)
    except OAuthError as error:
        return error_response(error)
    body = {
        **_endpoints(issuer),
        "grant_types_supported": GRANT_TYPES,
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    }
    return JSONResponse(body, headers={"Cache-Control": "max-age=300"})


async def openid_configuration(request: Request) -> Response:
    try:
        issuer, audience = issuer_of(request), fhir_base(request)
    except OAuthError as error:
        return error_response(error)
    body = {
        **_endpoints(issuer),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "grant_types_supported": GRANT_TYPES,
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "scopes_supported": SCOPES,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
        "code_challenge_methods_supported": ["S256"],
        "fhir_base": audience,
    }
    return JSONResponse(body, headers={"Cache-Control": "max-age=300"})
