"""The authorisation server's routes, mounted outside the FHIR base (and its discovery
documents under it, ahead of the FHIR catch-all)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from . import authorize, discovery, oauth


def oauth_routes(base: str) -> list[BaseRoute]:
    """base: the FHIR base path, e.g. /fhir. The POST endpoints take GET too, to answer
    it with an OAuth error (405) rather than a FHIR OperationOutcome."""
    return [
        Route("/oauth/authorize", authorize.authorize, methods=["GET", "POST"]),
        Route("/oauth/token", oauth.token, methods=["GET", "POST"]),
        Route("/oauth/introspect", oauth.introspect, methods=["GET", "POST"]),
        Route("/oauth/revoke", oauth.revoke, methods=["GET", "POST"]),
        Route("/jwks", oauth.jwks, methods=["GET"]),
        Route("/.well-known/openid-configuration", discovery.openid_configuration, methods=["GET"]),
        Route(base + "/.well-known/openid-configuration", discovery.openid_configuration, methods=["GET"]),
        Route(base + "/.well-known/smart-configuration", discovery.smart_configuration, methods=["GET"]),
    ]
