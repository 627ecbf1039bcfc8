"""Bearer tokens (RFC 6750) to Principals: the authenticator every FHIR request passes.

Refusals are 401 with `WWW-Authenticate: Bearer` (RFC 6750 §3): no error code when no
token was sent, `error="invalid_token"` when one was and cannot be used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request

from ..fhir.outcome import FhirError
from .external import TrustedIssuer
from .policies import Policies
from .principal import SYSTEM, Principal
from .tokens import AccessTokens, InvalidToken

# (request, audience: this request's FHIR base URL) -> the caller
Authenticator = Callable[[Request, str], Awaitable[Principal]]


def unauthorized(message: str, error: str | None = "invalid_token") -> FhirError:
    fault = FhirError.of(401, "login" if error is None else "security", message)
    challenge = 'Bearer realm="fhir"'
    if error is not None:
        # a quoted-string (RFC 9110 §5.6.4): the message may quote a token's own text
        description = "".join(c for c in message if c.isprintable()).replace("\\", "\\\\").replace('"', '\\"')
        challenge += f', error="{error}", error_description="{description}"'
    fault.headers["WWW-Authenticate"] = challenge
    return fault


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer` header; None when there is no header; 401 when malformed."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token or len(token) > 16384:
        raise unauthorized("the Authorization header must be 'Bearer <token>'")
    return token


def token_authenticator(
    tokens: AccessTokens, trusted: TrustedIssuer | None = None, policies: Policies | None = None
) -> Authenticator:
    """Principals from this server's access tokens, and from a trusted external issuer's when one is set;
    with policies, each carrying its subject's access policy (auth/policies.py)."""

    async def authenticate(request: Request, audience: str) -> Principal:
        token = bearer_token(request)
        if token is None:
            raise unauthorized("an access token is required (Authorization: Bearer <token>)", error=None)
        external = None
        try:
            if trusted is not None:
                # ours stay the fast path: a remembered external token, else the unverified `iss` chooses
                external = trusted.cached(token)
                if external is None and trusted.issued(token):
                    external = await trusted.verify(token)
            if external is not None:
                principal = external
            else:
                principal = tokens.verify(token, audience, request.app.state.settings.base_path)
        except InvalidToken as error:
            raise unauthorized(str(error)) from None
        return principal if policies is None else await policies.apply(token, principal)

    return authenticate


async def authenticate_as_system(request: Request, audience: str) -> Principal:
    """EHR_AUTH=off (loopback only): every request runs as SYSTEM."""
    return SYSTEM
