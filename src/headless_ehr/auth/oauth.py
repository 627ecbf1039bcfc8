"""The OAuth 2.0 endpoints a client calls directly: token (RFC 6749 §3.2, SMART App
Launch 2.2 and Backend Services), introspection (RFC 7662), revocation (RFC 7009) and
the public keys (/jwks). Errors are RFC 6749 §5.2 JSON; nothing here is cached.

Clients authenticate with HTTP Basic (client_secret_basic), a signed JWT
(private_key_jwt) or, public clients, by their client_id alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from joserfc import jwt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..audit import security_events as se
from ..fhir.outcome import FhirError
from ..rest.responses import base_url
from . import accounts, audit_trail, grants, secrets, tokens
from .accounts import Client
from .assertions import ASSERTION_TYPE, BadAssertion, JwksCache, authenticate_assertion
from .purpose import PurposeError, check_break_the_glass, parse_purposes
from .scopes import ScopeError, grants_of, narrow, parse_grant, split_scopes
from .tokens import InvalidToken

MAX_FORM_BYTES = 64 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
REFRESH_SCOPES = ("offline_access", "online_access")


class OAuthError(Exception):
    """An RFC 6749 §5.2 error."""

    def __init__(self, error: str, description: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.error, self.description, self.status = error, description, status
        self.headers = headers or {}


def error_response(error: OAuthError) -> Response:
    body = {"error": error.error, "error_description": error.description}
    return JSONResponse(body, error.status, headers={**NO_STORE, **error.headers})


def _json(body: dict[str, Any]) -> Response:
    return JSONResponse(body, headers=NO_STORE)


# ---- where we are -----------------------------------------------------------------------


def fhir_base(request: Request) -> str:
    """The FHIR base URL: the audience of our access tokens."""
    try:
        return base_url(request)
    except FhirError as error:  # a malformed or unknown Host
        raise OAuthError("invalid_request", error.issues[0].diagnostics or "bad Host", 400) from None


def issuer_of(request: Request) -> str:
    """The server origin (the FHIR base minus its path): `iss` of our tokens, prefix of /oauth."""
    return tokens.issuer_of(fhir_base(request), request.app.state.settings.base_path)


def token_endpoint(request: Request) -> str:
    return issuer_of(request) + "/oauth/token"


# ---- requests ---------------------------------------------------------------------------


async def read_form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body, each parameter at most once (RFC 6749 §3.2)."""
    if request.method != "POST":
        raise OAuthError("invalid_request", "use POST", 405, {"Allow": "POST"})
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise OAuthError("invalid_request", "the request body is too large", 413)
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the body is not a readable form") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            raise OAuthError("invalid_request", "parameters may not hold NUL characters")
        if name in form:
            raise OAuthError("invalid_request", f"parameter '{name[:50]}' is given more than once")
        form[name] = value
    return form


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise _invalid_client("only HTTP Basic client authentication is accepted in the Authorization header")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise _invalid_client("the Basic credentials are not base64 of client_id:client_secret") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep or "\x00" in decoded:
        raise _invalid_client("the Basic credentials are not base64 of client_id:client_secret")
    # RFC 6749 §2.3.1: both parts form-urlencoded before encoding
    return unquote_plus(client_id), unquote_plus(secret)


def _invalid_client(description: str, basic: bool = True) -> OAuthError:
    headers = {"WWW-Authenticate": 'Basic realm="oauth"'} if basic else {}
    return OAuthError("invalid_client", description, 401, headers)


def jwks_cache(request: Request) -> JwksCache:
    cache = getattr(request.app.state, "jwks_cache", None)
    if cache is None:
        cache = request.app.state.jwks_cache = JwksCache()
    return cache


async def authenticate_client(request: Request, form: dict[str, str], *, public_ok: bool) -> Client:
    """The client making this request. Public clients (client_id only) only where public_ok."""
    named = form.get("client_id")
    event = audit_trail.event_of(request)
    if event is not None:
        event.client_id = named  # as claimed, until authenticated
    basic = _basic_credentials(request)
    client = await _authenticated_client(request, form, named, basic, public_ok)
    if event is not None:
        event.client_id = client.client_id
    return client


async def _authenticated_client(
    request: Request, form: dict[str, str], named: str | None, basic: tuple[str, str] | None, public_ok: bool
) -> Client:
    pool = request.app.state.pool
    event = audit_trail.event_of(request)
    if basic is not None and "client_assertion" in form:
        raise OAuthError("invalid_request", "use one client authentication method, not two")
    if basic is not None:
        client_id, secret = basic
        if event is not None:
            event.client_id = client_id
        if named is not None and named != client_id:
            raise _invalid_client("client_id differs from the authenticated client")
        client = await accounts.check_client_secret(pool, client_id, secret)
        if client is None:
            raise _invalid_client("client authentication failed")
        return client
    if "client_assertion" in form:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise _invalid_client(f"client_assertion_type must be {ASSERTION_TYPE}", basic=False)
        try:
            client = await authenticate_assertion(
                pool, jwks_cache(request), form["client_assertion"], token_endpoint(request)
            )
        except BadAssertion as error:
            raise _invalid_client(str(error), basic=False) from None
        if named is not None and named != client.client_id:
            raise _invalid_client("client_id differs from the authenticated client", basic=False)
        return client
    if "client_secret" in form:
        raise _invalid_client("send the client secret with HTTP Basic (client_secret_basic), not in the body")
    if named is None:
        raise _invalid_client("client authentication is required")
    client = await accounts.get_client(pool, named)
    if client is None or not client.enabled:
        raise _invalid_client("unknown or disabled client", basic=False)
    if not client.public:
        raise _invalid_client("this client is confidential: authenticate it")
    if not public_ok:
        raise OAuthError("unauthorized_client", "a public client may not use this grant")
    return client


# ---- the token endpoint -----------------------------------------------------------------


PURGE_EVERY = 600.0  # seconds between a node's sweeps of spent codes, assertion ids, sessions


async def _sweep(request: Request) -> None:
    state = request.app.state
    now = time.monotonic()
    if now - getattr(state, "oauth_swept", -PURGE_EVERY) >= PURGE_EVERY:
        state.oauth_swept = now
        await grants.purge(state.pool)


async def token(request: Request) -> Response:
    await _sweep(request)
    event = audit_trail.begin(request, se.SecurityEvent(se.USER_AUTHENTICATION, se.GET_ACCESS_TOKEN, 200, None))
    event.details["endpoint"] = "token"
    try:
        form = await read_form(request)
        grant_type = form.get("grant_type")
        event.details["grant_type"] = (grant_type or "")[:100]
        event.details["requested_scope"] = form.get("scope", "")
        if grant_type not in ("authorization_code", "refresh_token", "client_credentials"):
            if grant_type is None:
                raise OAuthError("invalid_request", "grant_type is required")
            raise OAuthError("unsupported_grant_type", f"grant_type '{grant_type[:50]}' is not supported")
        client = await authenticate_client(request, form, public_ok=grant_type != "client_credentials")
        if grant_type == "client_credentials":
            body = await _client_credentials(request, client, form)
        elif grant_type == "authorization_code":
            body = await _authorization_code(request, client, form)
        else:
            body = await _refresh_token(request, client, form)
    except OAuthError as error:
        await _refused(request, event, error)
        return error_response(error)
    await audit_trail.record(request, event)
    return _json(body)


async def _refused(request: Request, event: se.SecurityEvent, error: OAuthError) -> None:
    event.status, event.description = error.status, f"{error.error}: {error.description}"
    await audit_trail.record(request, event)


def _granted(request: Request, scope: str, jti: str) -> None:
    """What the audit record of this token request names: the scope granted and the token's id."""
    event = audit_trail.event_of(request)
    if event is not None:
        event.details["scope"], event.token_id = scope, jti


def _requested(form: dict[str, str]) -> list[str] | None:
    if "scope" not in form:
        return None
    try:
        return split_scopes(form["scope"])
    except ScopeError as error:
        raise OAuthError("invalid_scope", str(error)) from None


async def _purposes(request: Request, form: dict[str, str], granted: str | None, kind: str, subject: str) -> list[str]:
    """The purpose of use of the access token asked for: the request's `purpose_of_use`,
    else the grant's (from the authorization request); BTG only with a policy allowing it."""
    try:
        purposes = parse_purposes(form.get("purpose_of_use", granted))
        await check_break_the_glass(getattr(request.app.state, "policies", None), kind, subject, purposes)
    except PurposeError as error:
        raise OAuthError("invalid_request", str(error)) from None
    return list(purposes)


def _narrow(requested: list[str], allowed: list[str]) -> list[str]:
    try:
        return narrow(requested, allowed)
    except ScopeError as error:
        raise OAuthError("invalid_scope", str(error)) from None


async def _client_credentials(request: Request, client: Client, form: dict[str, str]) -> dict[str, Any]:
    """SMART Backend Services: system scopes for the client itself; no refresh token."""
    requested = _requested(form)
    granted = [s for s in _narrow(requested or list(client.scopes), list(client.scopes)) if _is_system(s)]
    if not granted:
        raise OAuthError("invalid_scope", "none of the requested scopes is a system scope this client may have")
    scope = " ".join(granted)
    purposes = await _purposes(request, form, None, "client", client.client_id)
    issued = request.app.state.tokens.issue(
        issuer=issuer_of(request),
        audience=fhir_base(request),
        subject=client.client_id,
        client_id=client.client_id,
        scope=scope,
        purpose_of_use=purposes or None,
    )
    _granted(request, scope, issued.jti)
    return {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": scope,
    }


def _is_system(scope: str) -> bool:
    grant = parse_grant(scope)
    return grant is not None and grant.context == "system"


def _pkce_matches(verifier: str | None, challenge: str) -> bool:
    if verifier is None or not _VERIFIER.fullmatch(verifier):
        return False
    computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return secrets.same(computed, challenge)


async def _authorization_code(request: Request, client: Client, form: dict[str, str]) -> dict[str, Any]:
    pool = request.app.state.pool
    code = form.get("code")
    if not code:
        raise OAuthError("invalid_request", "code is required")
    try:
        grant = await grants.redeem_code(pool, code)
    except grants.GrantReused as error:
        raise OAuthError("invalid_grant", str(error)) from None
    if grant is None or grant.client_id != client.client_id:
        raise OAuthError("invalid_grant", "the code is unknown or was issued to another client")
    if grant.expired:
        raise OAuthError("invalid_grant", "the code has expired")
    if form.get("redirect_uri") != grant.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri differs from the one of the authorization request")
    if not _pkce_matches(form.get("code_verifier"), grant.code_challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge (PKCE S256)")
    user = await _enabled_user(request, pool, grant.username)
    scopes = split_scopes(grant.scope)
    purposes = await _purposes(request, form, grant.purpose_of_use, "user", user.username)
    body = _user_tokens(request, client, user, scopes, grant.patient, grant.encounter, grant.aud, grant.nonce, purposes)
    if any(s in scopes for s in REFRESH_SCOPES):
        refresh, family = await _carry_on(pool, grant, None, client, user)
        await grants.link_code_family(pool, code, family)
        body["refresh_token"] = refresh
    return body


async def _enabled_user(request: Request, db: accounts.Db, username: str | None) -> accounts.User:
    """The user of a code or refresh token: a disabled or deleted user's grants are dead."""
    event = audit_trail.event_of(request)
    if event is not None:
        event.username = username
    user = await accounts.get_user(db, username) if username else None
    if user is None or not user.enabled:
        raise OAuthError("invalid_grant", "the user is no longer enabled")
    return user


async def _carry_on(
    db: accounts.Db,
    grant: grants.CodeGrant | grants.RefreshGrant,
    family: uuid.UUID | None,
    client: Client,
    user: accounts.User,
) -> tuple[str, uuid.UUID]:
    """A refresh token carrying a grant on (a code's, or the refresh token it replaces): the same
    scope, context and audience; it lives until revoked with offline_access, a working day without."""
    scopes = split_scopes(grant.scope)
    return await grants.issue_refresh(
        db,
        family=family,
        client_id=client.client_id,
        username=user.username,
        fhir_user=user.fhir_user,
        scope=grant.scope,
        patient=grant.patient,
        encounter=grant.encounter,
        aud=grant.aud,
        lifetime=None if "offline_access" in scopes else grants.ONLINE_REFRESH_LIFETIME,
        purpose_of_use=grant.purpose_of_use,
    )


def _user_tokens(
    request: Request,
    client: Client,
    user: accounts.User,
    scopes: list[str],
    patient: str | None,
    encounter: str | None,
    aud: str,
    nonce: str | None,
    purposes: list[str] | None = None,
) -> dict[str, Any]:
    """Access token (and id_token when openid was granted) for a user's grant."""
    scope = " ".join(scopes)
    issuer = issuer_of(request)
    issued = request.app.state.tokens.issue(
        issuer=issuer,
        audience=aud,
        subject=user.username,
        client_id=client.client_id,
        scope=scope,
        patient=patient,
        encounter=encounter,
        fhirUser=user.fhir_user,
        roles=list(user.roles) or None,
        purpose_of_use=purposes or None,
    )
    _granted(request, scope, issued.jti)
    event = audit_trail.event_of(request)
    if event is not None:
        event.username, event.fhir_user = user.username, user.fhir_user
        event.patients = [patient] if patient is not None else []
    body: dict[str, Any] = {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": scope,
    }
    if patient is not None:
        body["patient"] = patient
    if encounter is not None:
        body["encounter"] = encounter
    if "openid" in scopes:
        body["id_token"] = _id_token(request, issuer, client, user, aud, nonce, "fhirUser" in scopes)
    return body


def _id_token(
    request: Request,
    issuer: str,
    client: Client,
    user: accounts.User,
    aud: str,
    nonce: str | None,
    with_fhir_user: bool,
) -> str:
    """An OpenID Connect ID token for the client: who signed in (fhirUser as an absolute URL)."""
    keys = request.app.state.signing_keys
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": user.username,
        "aud": client.client_id,
        "iat": now,
        "exp": now + request.app.state.tokens.lifetime,
    }
    if nonce is not None:
        claims["nonce"] = nonce
    if with_fhir_user and user.fhir_user:
        claims["fhirUser"] = f"{aud}/{user.fhir_user}"
    header = {"alg": "ES256", "kid": keys.signing.kid, "typ": "JWT"}
    return jwt.encode(header, claims, keys.signing, algorithms=["ES256"])


async def _refresh_token(request: Request, client: Client, form: dict[str, str]) -> dict[str, Any]:
    """Rotate a refresh token; a reused one revokes its family. Scopes may narrow, never widen."""
    pool = request.app.state.pool
    presented = form.get("refresh_token")
    if not presented:
        raise OAuthError("invalid_request", "refresh_token is required")
    requested = _requested(form)
    reused = False
    async with pool.acquire() as conn, conn.transaction():
        try:
            grant = await grants.use_refresh(conn, presented)
        except grants.GrantReused:
            grant, reused = None, True
        if grant is not None:
            if grant.client_id != client.client_id:
                raise OAuthError("invalid_grant", "the refresh token was issued to another client")
            original = split_scopes(grant.scope)
            if requested is not None and _narrow(requested, original) != requested:
                raise OAuthError("invalid_scope", "a refresh may not ask for scopes beyond the original grant")
            user = await _enabled_user(request, conn, grant.username)
            purposes = await _purposes(request, form, grant.purpose_of_use, "user", user.username)
            refresh, _ = await _carry_on(conn, grant, grant.family, client, user)
    if reused:
        raise OAuthError("invalid_grant", "the refresh token has been used already; its grant is revoked")
    if grant is None:
        raise OAuthError("invalid_grant", "the refresh token is unknown, expired or revoked")
    scopes = requested if requested is not None else original
    body = _user_tokens(request, client, user, scopes, grant.patient, grant.encounter, grant.aud, None, purposes)
    body["refresh_token"] = refresh
    return body


# ---- introspection and revocation -------------------------------------------------------


async def _token_request(request: Request, public_ok: bool) -> tuple[Client, dict[str, str], str]:
    """The authenticated client, its form and the token it presents (introspection, revocation)."""
    form = await read_form(request)
    client = await authenticate_client(request, form, public_ok=public_ok)
    presented = form.get("token")
    if not presented:
        raise OAuthError("invalid_request", "token is required")
    return client, form, presented


def _may_see(client: Client, owner: str | None) -> bool:
    """A client introspects and revokes its own tokens; the admin client anyone's."""
    return owner == client.client_id or client.admin


def _access_claims(request: Request, token: str) -> dict[str, Any] | None:
    try:
        return request.app.state.tokens.decode(token, fhir_base(request), request.app.state.settings.base_path)
    except InvalidToken:
        return None


async def introspect(request: Request) -> Response:
    """RFC 7662 for a confidential client: what a token stands for, or active false."""
    event = audit_trail.begin(request, se.SecurityEvent(se.USER_AUTHENTICATION, se.INTROSPECT_TOKEN, 200, None))
    try:
        client, form, presented = await _token_request(request, public_ok=False)
    except OAuthError as error:
        await _refused(request, event, error)
        return error_response(error)
    answer = await _introspection(request, client, form, presented)
    event.details["active"] = "true" if answer.get("active") else "false"
    if answer.get("active"):
        event.details["token_type"] = str(answer.get("token_type"))
        event.token_id = answer.get("jti")
    await audit_trail.record(request, event)
    return _json(answer)


async def _introspection(request: Request, client: Client, form: dict[str, str], presented: str) -> dict[str, Any]:
    hint = form.get("token_type_hint")
    claims = _access_claims(request, presented) if hint != "refresh_token" or "." in presented else None
    if claims is not None:
        body = {"active": True, "token_type": "Bearer"}
        for name in ("scope", "client_id", "sub", "exp", "iat", "nbf", "iss", "aud", "jti", "patient", "encounter"):
            if name in claims:
                body[name] = claims[name]
        if "fhirUser" in claims:
            body["fhirUser"] = claims["fhirUser"]
        if claims.get("sub") and claims.get("sub") != claims.get("client_id"):
            body["username"] = claims["sub"]
        return body
    refresh = await grants.find_refresh(request.app.state.pool, presented)
    if refresh is not None and _may_see(client, refresh.client_id):
        body = {"active": True, "token_type": "refresh_token", "scope": refresh.scope, "client_id": refresh.client_id}
        if refresh.username:
            body["sub"] = body["username"] = refresh.username
        if refresh.expires_at is not None:
            body["exp"] = int(refresh.expires_at.timestamp())
        return body
    return {"active": False}


async def revoke(request: Request) -> Response:
    """RFC 7009: an access token is refused from now on; a refresh token's whole family too.
    200 whatever the token was (an unknown one tells nothing); the audit record says what happened."""
    event = audit_trail.begin(request, se.SecurityEvent(se.USER_AUTHENTICATION, se.LOGOUT, 200, None))
    try:
        client, _, presented = await _token_request(request, public_ok=True)
    except OAuthError as error:
        await _refused(request, event, error)
        return error_response(error)
    revoked = "nothing"
    claims = _access_claims(request, presented)
    if claims is not None:
        if _may_see(client, claims.get("client_id")):
            await request.app.state.tokens.revoke(claims["jti"], float(claims["exp"]))
            revoked, event.token_id = "access token", claims["jti"]
    else:
        refresh = await grants.refresh_exists(request.app.state.pool, presented)
        if refresh is not None and _may_see(client, refresh.client_id):
            await grants.revoke_family(request.app.state.pool, refresh.family)
            revoked = "refresh token family"
    event.details["revoked"] = revoked
    await audit_trail.record(request, event)
    return Response(status_code=200, headers=NO_STORE)


async def jwks(request: Request) -> Response:
    return JSONResponse(request.app.state.signing_keys.jwks(), headers={"Cache-Control": "max-age=60"})


def has_resource_grant(scopes: list[str]) -> bool:
    return bool(grants_of(scopes))
