"""The authorization endpoint (RFC 6749 §4.1, SMART App Launch 2.2): the only pages this
product serves. GET or POST (authorize-post) with the app's request; then a login form,
a patient picker when the user may act for several patients and `launch/patient` is
asked, and a consent form listing the scopes in words. A code goes back to the app's
registered redirect_uri.

The flow keeps no server state between pages: each form carries the app's request in
hidden fields and every step checks it again. Forms are CSRF-protected by a token
derived from the browser's session cookie (HttpOnly, SameSite=Lax), which a page from
another site can neither read nor send with a cross-site POST. Signing in makes a new
cookie value (no session fixation) stored as a digest in auth_session.

Errors before the client and its redirect_uri are known are shown as a page, never
redirected (RFC 6749 §4.1.2.1); after, they are redirected to the app with `error`.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..audit import security_events as se
from . import accounts, audit_trail, grants, secrets
from .accounts import Client, User
from .launch import resolve_launch
from .login_throttle import LoginThrottle
from .oauth import MAX_FORM_BYTES, OAuthError, fhir_base, issuer_of
from .purpose import PurposeError, check_break_the_glass, parse_purposes
from .ratelimit import client_address
from .scopes import ScopeError, narrow, parse_grant, split_scopes

COOKIE = "ehr_session"
SESSION_LIFETIME = 8 * 3600  # seconds a sign-in lasts in the browser
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
REQUEST_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
    "launch",
    "nonce",
    "purpose_of_use",
)
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class PageError(Exception):
    """An error shown to the user (no trustworthy redirect_uri to send it to)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Redirected(Exception):
    """An error sent back to the app's redirect_uri (RFC 6749 §4.1.2.1)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error


@dataclass
class Flow:
    """One authorization request, as checked."""

    client: Client
    redirect_uri: str
    state: str
    scopes: list[str]  # requested
    offered: list[str]  # requested ∩ what the client may have
    code_challenge: str
    aud: str
    nonce: str | None
    launch_patient: str | None = None
    launch_encounter: str | None = None
    purposes: tuple[str, ...] = ()  # purpose_of_use asked for (auth/purpose.py)
    request: dict[str, str] | None = None  # the app's parameters, carried in hidden fields
    endpoint: str = "/oauth/authorize"  # where the forms post (behind a proxy prefix too)


# ---- reading the request ------------------------------------------------------------------


async def _params(request: Request) -> dict[str, list[str]]:
    if request.method == "GET":
        pairs = parse_qsl(request.url.query, keep_blank_values=True)
    else:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise PageError("the authorization request must be a form (application/x-www-form-urlencoded)")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise PageError("the request is too large", 413)
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            raise PageError("the request is not a readable form") from None
    params: dict[str, list[str]] = {}
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            raise PageError("the request holds a NUL character")
        params.setdefault(name, []).append(value)
    return params


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise Redirected("invalid_request", f"parameter '{name}' is given more than once")
    return values[0]


async def _flow(request: Request, params: dict[str, list[str]]) -> Flow:
    """The checked authorization request. PageError until the redirect_uri is trusted, then Redirected."""
    client_ids, redirect_uris = params.get("client_id") or [], params.get("redirect_uri") or []
    if len(client_ids) != 1:
        raise PageError("the request must name exactly one client_id")
    _authorization(request).client_id = client_ids[0]  # as claimed, until the redirect_uri is checked too
    client = await accounts.get_client(request.app.state.pool, client_ids[0])
    if client is None or not client.enabled:
        raise PageError("the application (client_id) is not registered here, or is disabled")
    if len(redirect_uris) != 1:
        raise PageError("the request must give exactly one redirect_uri")
    redirect_uri = redirect_uris[0]
    if redirect_uri not in client.redirect_uris:
        raise PageError("the redirect_uri is not one registered for this application")
    return Flow(client, redirect_uri, "", [], [], "", "", None)


async def _check(request: Request, flow: Flow, params: dict[str, list[str]]) -> None:
    """The rest of the request; Redirected when it cannot be served."""
    try:
        flow.state = _one(params, "state") or ""
        if _one(params, "response_type") != "code":
            raise Redirected("unsupported_response_type", "response_type must be 'code'")
        if not flow.state:
            raise Redirected("invalid_request", "state is required")
        challenge, method = _one(params, "code_challenge"), _one(params, "code_challenge_method")
        if challenge is None or method != "S256":
            raise Redirected("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256")
        if not _CHALLENGE.fullmatch(challenge):
            raise Redirected("invalid_request", "code_challenge must be the base64url SHA-256 of the verifier")
        flow.code_challenge = challenge
        aud = _one(params, "aud")
        flow.aud = fhir_base(request)
        if aud is None or aud.rstrip("/") != flow.aud:
            raise Redirected("invalid_request", f"aud must be this server's FHIR base URL, {flow.aud}")
        flow.nonce = _one(params, "nonce")
        try:
            flow.purposes = parse_purposes(_one(params, "purpose_of_use"))
        except PurposeError as error:
            raise Redirected("invalid_request", str(error)) from None
        try:
            flow.scopes = split_scopes(_one(params, "scope"))
            # system/ scopes are for backend services (client_credentials): a user's grant
            # never carries one, or any user signing in through the app would act as the system
            flow.offered = [s for s in narrow(flow.scopes, list(flow.client.scopes)) if not _is_system(s)]
        except ScopeError as error:
            raise Redirected("invalid_scope", str(error)) from None
        _authorization(request).details["requested_scope"] = " ".join(flow.scopes)
        if not flow.scopes:
            raise Redirected("invalid_scope", "scope is required")
        if not flow.offered:
            raise Redirected("invalid_scope", "none of the requested scopes is registered for this application")
        launch = _one(params, "launch")
        if launch is not None:
            context = await resolve_launch(request.app.state.pool, launch)
            if context is None:
                raise Redirected("invalid_request", "the launch parameter is unknown or has expired")
            flow.launch_patient, flow.launch_encounter = context.patient, context.encounter
        elif "launch" in flow.scopes:
            raise Redirected("invalid_request", "the launch scope needs the launch parameter of an EHR launch")
        flow.endpoint = issuer_of(request) + "/oauth/authorize"
        flow.request = {name: value for name in REQUEST_PARAMS if (value := _one(params, name)) is not None}
    except OAuthError as error:  # a malformed Host (from fhir_base)
        raise PageError(error.description) from None


def _is_system(scope: str) -> bool:
    grant = parse_grant(scope)
    return grant is not None and grant.context == "system"


def _redirect(request: Request, flow: Flow, **params: str) -> Response:
    """Back to the app: its redirect_uri with our parameters added to its query."""
    parts = urlsplit(flow.redirect_uri)
    query = "&".join(q for q in (parts.query, urlencode({**params, "state": flow.state})) if q)
    status = 303 if request.method == "POST" else 302
    return RedirectResponse(urlunsplit(parts._replace(query=query)), status, headers={"Cache-Control": "no-store"})


def _throttle(request: Request) -> LoginThrottle:
    throttle = getattr(request.app.state, "login_throttle", None)
    if throttle is None:
        throttle = request.app.state.login_throttle = LoginThrottle()
    return throttle


# ---- the browser session --------------------------------------------------------------------


def _csrf(cookie: str) -> str:
    """The CSRF token of a session cookie: only a page that could read the cookie knows it."""
    return secrets.digest("csrf:" + cookie)


def _secure(request: Request) -> bool:
    return issuer_of(request).startswith("https:")


async def _session_user(request: Request, cookie: str | None) -> User | None:
    if not cookie:
        return None
    username = await request.app.state.pool.fetchval(
        "SELECT username FROM auth_session WHERE session_hash = $1 AND expires_at > now()", secrets.digest(cookie)
    )
    if username is None:
        return None
    user = await accounts.get_user(request.app.state.pool, username)
    return user if user is not None and user.enabled else None


async def _sign_in(request: Request, user: User) -> str:
    """A new session cookie value for the user (never the one sent before signing in)."""
    cookie = secrets.new_token()
    pool = request.app.state.pool
    await pool.execute("DELETE FROM auth_session WHERE expires_at < now()")
    await pool.execute(
        "INSERT INTO auth_session (session_hash, username, expires_at)"
        " VALUES ($1, $2, now() + make_interval(secs => $3))",
        secrets.digest(cookie),
        user.username,
        SESSION_LIFETIME,
    )
    return cookie


def _with_cookie(request: Request, response: Response, cookie: str) -> Response:
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=SESSION_LIFETIME,
        path=urlsplit(issuer_of(request)).path.rstrip("/") + "/oauth",  # where the browser sees /oauth (proxy prefix)
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )
    return response


# ---- the endpoint ---------------------------------------------------------------------------


def _authorization(request: Request) -> se.SecurityEvent:
    """The audit record of this authorization request (IUA ITI-71), filled in step by step."""
    event = audit_trail.event_of(request)
    if event is None:
        event = se.SecurityEvent(se.USER_AUTHENTICATION, se.GET_ACCESS_TOKEN, 200, None, user_requests=True)
        event.details["endpoint"] = "authorize"  # the browser asks: the user is the requestor
        audit_trail.begin(request, event)
    return event


async def _refused(request: Request, status: int, description: str) -> None:
    event = _authorization(request)
    event.status, event.description = status, description
    await audit_trail.record(request, event)


async def _sign_in_recorded(request: Request, username: str, user: User | None, status: int, why: str) -> None:
    """A sign-in (DICOM 110122 Login), successful or not, with the username tried (never the password)."""
    app = _authorization(request).client_id
    event = se.SecurityEvent(se.USER_AUTHENTICATION, se.LOGIN, status, None, client_id=app, user_requests=True)
    event.username = user.username if user is not None else username[:200]
    event.fhir_user = user.fhir_user if user is not None else None
    event.description = why or None
    await audit_trail.record(request, event)


async def authorize(request: Request) -> Response:
    sent = request.cookies.get(COOKIE)
    cookie = sent if sent and len(sent) <= 128 else secrets.new_token()
    try:
        response, cookie = await _authorize(request, cookie)
    except PageError as error:
        await _refused(request, error.status, str(error))
        response = _page("Cannot continue", f'<p role="alert">{_e(str(error))}</p>', error.status)
    if cookie != sent:
        _with_cookie(request, response, cookie)
    return response


async def _authorize(request: Request, cookie: str) -> tuple[Response, str]:
    """The page or redirect answering this step, and the session cookie from now on."""
    params = await _params(request)
    flow = await _flow(request, params)
    try:
        await _check(request, flow, params)
        action = params.get("action", [None])[0] if request.method == "POST" else None
        if action is not None and not secrets.same(params.get("csrf", [""])[0], _csrf(cookie)):
            raise PageError("this form has expired or did not come from this server; start again from the app", 403)
        if action == "login":
            pool = request.app.state.pool
            username = params.get("username", [""])[0]
            throttle, address = (
                _throttle(request),
                client_address(request.scope, request.app.state.settings.trusted_proxies),
            )
            wait = await throttle.wait(username[:200], address)
            if wait is not None:
                await _sign_in_recorded(request, username, None, 429, "too many failed sign-ins: throttled")
                message = f"Too many failed sign-ins. Try again in {math.ceil(wait / 60)} minutes."
                return _login_page(flow, cookie, message, 429, {"Retry-After": str(wait)}), cookie
            user = await accounts.authenticate_user(pool, username, params.get("password", [""])[0])
            if user is None:
                await throttle.failed(username[:200], address)
                await _sign_in_recorded(request, username, None, 401, "unknown username, wrong password or disabled")
                return _login_page(flow, cookie, "The username or password is not right.", 401), cookie
            await _sign_in_recorded(request, username, user, 200, "")
            cookie = await _sign_in(request, user)
            action = None
        else:
            user = await _session_user(request, cookie)
            if user is None:
                return _login_page(flow, cookie), cookie
        event = _authorization(request)
        event.username, event.fhir_user = user.username, user.fhir_user
        return await _after_login(request, flow, user, params, action, cookie), cookie
    except Redirected as error:
        await _refused(request, 400 if error.error != "access_denied" else 403, f"{error.error}: {error}")
        return _redirect(request, flow, error=error.error, error_description=str(error)), cookie


async def _after_login(
    request: Request, flow: Flow, user: User, params: dict[str, list[str]], action: str | None, cookie: str
) -> Response:
    patient = _patient(flow, user, params, picked=action in ("pick", "consent"))
    if patient is _PICK:
        return _picker_page(flow, user, cookie)
    if action != "consent":
        return _consent_page(flow, user, patient, cookie)
    if params.get("decision", [""])[0] != "allow":
        raise Redirected("access_denied", "the user did not allow the application")
    chosen = set(params.get("granted", []))
    granted = [s for s in flow.offered if s in chosen]
    if not granted:
        raise Redirected("access_denied", "the user granted no scope")
    try:
        await check_break_the_glass(getattr(request.app.state, "policies", None), "user", user.username, flow.purposes)
    except PurposeError as error:
        raise Redirected("invalid_request", str(error)) from None
    code = await grants.create_code(
        request.app.state.pool,
        client_id=flow.client.client_id,
        username=user.username,
        redirect_uri=flow.redirect_uri,
        scope=" ".join(granted),
        code_challenge=flow.code_challenge,
        nonce=flow.nonce,
        patient=patient,
        encounter=flow.launch_encounter,
        aud=flow.aud,
        purpose_of_use=" ".join(flow.purposes) or None,
    )
    event = _authorization(request)
    event.details["scope"], event.patients = " ".join(granted), [patient] if patient is not None else []
    await audit_trail.record(request, event)  # the user's authorization: a code for these scopes
    return _redirect(request, flow, code=code)


_PICK = "\0pick"


def _patient(flow: Flow, user: User, params: dict[str, list[str]], picked: bool) -> str | None:
    """The patient in context: the EHR launch's, the user's own record, or the one picked."""
    if flow.launch_patient is not None:
        # a launch value is a bearer secret bound to no user: whoever holds it may not
        # use it to reach a patient they could not pick themselves
        # (a Patient user: their own record; a user with a patient list: one of those)
        choices = user.patient_choices
        if choices and flow.launch_patient not in choices:
            raise Redirected("access_denied", "the user may not act for the launch's patient")
        return flow.launch_patient
    wants_patient = "launch/patient" in flow.offered or any(
        (g := parse_grant(s)) is not None and g.context == "patient" for s in flow.offered
    )
    if not wants_patient:
        return None
    choices = user.patient_choices
    if user.fhir_user and user.fhir_user.startswith("Patient/"):
        return choices[0]
    if "launch/patient" not in flow.offered:
        return None
    if picked:
        chosen = params.get("patient", [""])[0]
        if chosen not in choices:
            raise PageError("choose one of the patients offered")
        return chosen
    if len(choices) == 1:
        return choices[0]
    if not choices:
        raise Redirected("access_denied", "the user may not act for any patient")
    return _PICK


# ---- pages ----------------------------------------------------------------------------------


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _page(title: str, body: str, status: int = 200) -> Response:
    document = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 32rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5 }}
label {{ display: block; margin: .75rem 0 .25rem }}
input[type=text], input[type=password] {{ width: 100%; padding: .5rem; font-size: 1rem; box-sizing: border-box }}
button {{ font-size: 1rem; padding: .5rem 1rem; margin: 1rem .5rem 0 0 }}
:focus {{ outline: 3px solid #1a5fb4; outline-offset: 2px }}
fieldset {{ border: 1px solid #888; padding: .5rem 1rem }}
.choice label {{ display: inline; margin: 0 }}
.choice {{ margin: .5rem 0 }}
[role=alert] {{ color: #a51d2d; font-weight: bold }}
</style>
</head>
<body>
<main>
<h1>{_e(title)}</h1>
{body}
</main>
</body>
</html>
"""
    return HTMLResponse(document, status, headers=PAGE_HEADERS)


def _hidden(flow: Flow, cookie: str, action: str) -> str:
    assert flow.request is not None
    fields = {**flow.request, "csrf": _csrf(cookie), "action": action}
    return "\n".join(f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">' for k, v in fields.items())


def _form(flow: Flow, cookie: str, action: str, inner: str) -> str:
    return f'<form method="post" action="{_e(flow.endpoint)}">\n{_hidden(flow, cookie, action)}\n{inner}\n</form>'


def _login_page(
    flow: Flow, cookie: str, error: str | None = None, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    alert = f'<p role="alert" id="error">{_e(error)}</p>' if error else ""
    described = ' aria-describedby="error"' if error else ""
    inner = f"""{alert}
<label for="username">Username</label>
<input type="text" id="username" name="username" autocomplete="username" required autofocus{described}>
<label for="password">Password</label>
<input type="password" id="password" name="password" autocomplete="current-password" required{described}>
<button type="submit">Sign in</button>"""
    intro = f"<p>Sign in to let <strong>{_e(flow.client.name)}</strong> use your health records.</p>"
    page = _page("Sign in", intro + _form(flow, cookie, "login", inner), status)
    page.headers.update(headers or {})
    return page


def _picker_page(flow: Flow, user: User, cookie: str) -> Response:
    options = "\n".join(
        f'<div class="choice"><input type="radio" id="patient-{i}" name="patient" value="{_e(p)}" required>'
        f' <label for="patient-{i}">Patient/{_e(p)}</label></div>'
        for i, p in enumerate(user.patient_choices)
    )
    inner = f"""<fieldset>
<legend>Which patient should <strong>{_e(flow.client.name)}</strong> work with?</legend>
{options}
</fieldset>
<button type="submit">Continue</button>"""
    return _page("Choose a patient", _form(flow, cookie, "pick", inner))


def _consent_page(flow: Flow, user: User, patient: str | None, cookie: str) -> Response:
    boxes = "\n".join(
        f'<div class="choice"><input type="checkbox" id="scope-{i}" name="granted" value="{_e(s)}" checked>'
        f' <label for="scope-{i}">{_e(describe_scope(s))} <code>{_e(s)}</code></label></div>'
        for i, s in enumerate(flow.offered)
    )
    about = f"<p>Signed in as <strong>{_e(user.username)}</strong>.</p>"
    if patient is not None:
        about += f"<p>Patient: <strong>Patient/{_e(patient)}</strong></p>"
    hidden_patient = f'<input type="hidden" name="patient" value="{_e(patient)}">' if patient is not None else ""
    inner = f"""{hidden_patient}
<fieldset>
<legend><strong>{_e(flow.client.name)}</strong> asks to:</legend>
{boxes}
</fieldset>
<button type="submit" name="decision" value="allow">Allow</button>
<button type="submit" name="decision" value="deny">Deny</button>"""
    return _page("Allow access?", about + _form(flow, cookie, "consent", inner))


_LETTERS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
_WHOSE = {
    "patient": "of the selected patient",
    "user": "that you may see",
    "system": "of every patient (system access)",
}
_OTHER = {
    "openid": "Know who you are (sign you in)",
    "fhirUser": "Know which FHIR record is you",
    "profile": "Know your profile",
    "launch": "Receive the context the EHR launched it in",
    "launch/patient": "Work with one patient you choose",
    "launch/encounter": "Work with the current encounter",
    "offline_access": "Keep access after you sign out, until you revoke it",
    "online_access": "Keep access while you stay signed in",
}


def describe_scope(scope: str) -> str:
    """A scope in words, for the consent page."""
    grant = parse_grant(scope)
    if grant is None:
        return _OTHER.get(scope, f"Use '{scope}'")
    verbs = [_LETTERS[c] for c in "cruds" if c in grant.permissions]
    listed = verbs[0] if len(verbs) == 1 else ", ".join(verbs[:-1]) + " and " + verbs[-1]
    what = "all records" if grant.resource_type == "*" else f"{grant.resource_type} records"
    text = f"{listed.capitalize()} {what} {_WHOSE[grant.context]}"
    if grant.criteria:
        text += " where " + ", ".join(f"{k} is {v}" for k, v in grant.criteria)
    return text
