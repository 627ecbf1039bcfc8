"""The admin API (`/admin/...`): clients, users, access policies and EHR launch contexts, JSON in and out.

Only an admin client's token with the whole system scope (`system/*.*` or
`system/*.cruds`) may call it: no token or a bad one is 401, any other token 403.
Errors are OperationOutcomes, as on /fhir. Disabling is `PATCH {"enabled": false}`
(`true` enables again); nothing else of an account changes after it is made.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..audit import security_events as se
from ..fhir.outcome import FhirError
from ..rest.responses import base_url, outcome_response
from . import accounts, audit_trail, policies, registration
from .accounts import AccountError, AccountExists
from .launch import LaunchError, create_launch
from .policies import PolicyError
from .principal import Principal

log = logging.getLogger("headless_ehr.auth")

MAX_BODY_BYTES = 256 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # answers may hold a client secret
Handler = Callable[[Request], Awaitable[Response]]


def admin_routes(prefix: str = "/admin") -> list[Route]:
    return [
        Route(f"{prefix}/clients", _endpoint(_collection(_CLIENTS)), methods=["GET", "POST"]),
        Route(f"{prefix}/clients/{{client_id}}", _endpoint(_item(_CLIENTS)), methods=["GET", "PATCH", "DELETE"]),
        Route(f"{prefix}/users", _endpoint(_collection(_USERS)), methods=["GET", "POST"]),
        Route(f"{prefix}/users/{{username}}", _endpoint(_item(_USERS)), methods=["GET", "PATCH", "DELETE"]),
        Route(f"{prefix}/policies", _endpoint(_policies), methods=["GET", "POST"]),
        Route(f"{prefix}/policies/{{name}}", _endpoint(_policy), methods=["GET", "PUT", "DELETE"]),
        Route(f"{prefix}/launch", _endpoint(_launch), methods=["POST"]),
    ]


def _endpoint(handler: Handler) -> Handler:
    """Authorise, run, and turn every failure into an OperationOutcome."""

    async def endpoint(request: Request) -> Response:
        try:
            request.state.principal = await authorise_admin(request)
            if any("\x00" in value for value in request.path_params.values()):
                raise FhirError.of(404, "not-found", "no such account")  # PostgreSQL text holds no NUL
            response = await handler(request)
            error = None
        except FhirError as refused:
            error = refused
        except AccountExists as refused:
            error = FhirError.of(409, "duplicate", str(refused))
        except (AccountError, PolicyError) as refused:
            error = FhirError.of(400, "invalid", str(refused))
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            error = FhirError.of(500, "exception", "internal server error")
        if error is not None:
            response = outcome_response(request, error)
        if request.method != "GET" or response.status_code in (401, 403):  # changes, and refusals
            await _record(request, response, error)
        return response

    return endpoint


admin_endpoint = _endpoint  # the admin routes of other packages (events/delivery_log.py) share it


# what an admin request touches: path kind -> (subtype, object-role of the entity)
_CHANGES = {
    "clients": (se.USER_SECURITY_ATTRIBUTES_CHANGED, se.SECURITY_USER),
    "users": (se.USER_SECURITY_ATTRIBUTES_CHANGED, se.SECURITY_USER),
    "policies": (se.SECURITY_ROLES_CHANGED, se.SECURITY_GRANULARITY),
    "launch": (se.RESTRICTED_FUNCTION, ""),
}
_ACTIONS = {"POST": "C", "PUT": "U", "PATCH": "U", "DELETE": "D"}


async def _record(request: Request, response: Response, error: FhirError | None) -> None:
    """The AuditEvent of an admin request: what it changed (or tried to), by whom, with what outcome."""
    kind = request.url.path.rstrip("/").rsplit("/admin/", 1)[-1].split("/", 1)[0]
    subtype, role = _CHANGES.get(kind, (se.USER_SECURITY_ATTRIBUTES_CHANGED, se.SECURITY_USER))
    principal: Principal | None = getattr(request.state, "principal", None)
    event = se.SecurityEvent(se.SECURITY_ALERT, subtype, response.status_code, None)
    event.action = _ACTIONS.get(request.method, "R")
    if principal is not None:
        event.client_id = principal.client_id or principal.subject
    name = next(iter(request.path_params.values()), None)
    if name is None and response.status_code == 201:  # a new account or policy: its key ends the Location
        name = unquote(response.headers.get("location", "").rsplit("/", 1)[-1]) or None
    if name is not None and role:
        event.objects.append((se.admin_object(kind, name), role))
    patient = getattr(request.state, "launch_patient", None)
    event.patients = [patient] if patient else []
    if error is not None:
        event.description = error.issues[0].diagnostics if error.issues else None
    elif request.method in ("PATCH", "PUT"):  # what the account or policy is now
        answer = orjson.loads(bytes(response.body))
        for field in ("enabled", "version"):
            if field in answer:
                event.details[field] = orjson.dumps(answer[field]).decode()
    await audit_trail.record(request, event)


def holds_whole_system_scope(principal: Principal) -> bool:
    """`system/*.*` (v1) or `system/*.cruds` (v2), without search criteria."""
    return any(
        g.context == "system" and g.resource_type == "*" and g.permissions == frozenset("cruds") and not g.criteria
        for g in principal.grants or ()
    )


async def authorise_admin(request: Request) -> Principal:
    """The caller, when it may use the admin API: 401 without a usable token, 403 for any but an admin client's."""
    principal = await request.app.state.authenticate(request, base_url(request))
    request.state.principal = principal  # who asked, for the audit record of a refusal too
    if principal.grants is None:  # EHR_AUTH=off (loopback only): the caller is the system
        return principal
    foreign = "issuer" in principal.attributes  # a trusted external issuer's token names none of our clients
    if (
        foreign
        or not holds_whole_system_scope(principal)
        or principal.patient
        or principal.subject != principal.client_id
    ):
        raise FhirError.of(403, "forbidden", "the admin API needs a client token with system/*.* or system/*.cruds")
    client = await accounts.get_client(request.app.state.pool, principal.client_id or "")
    if client is None or not client.admin or not client.enabled:
        raise FhirError.of(403, "forbidden", "only an admin client may use the admin API")
    return principal


async def _body(request: Request) -> Any:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", "application/fhir+json"):
        raise FhirError.of(415, "not-supported", "send JSON (Content-Type: application/json)")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise FhirError.of(413, "too-costly", f"the body is larger than {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise FhirError.of(413, "too-costly", f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise FhirError.of(400, "invalid", f"the body is not valid JSON: {error}") from None
    if b"\\u0000" in body and _holds_nul(value):
        raise FhirError.of(400, "invalid", "the body holds a NUL character (\\u0000)")
    return value


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(value), status, {**_NO_STORE, **(headers or {})}, media_type="application/json")


def _location(request: Request, key: str) -> str:
    """The new account's URL, relative (RFC 9110 §10.2.2), so it holds behind any proxy."""
    return f"{request.url.path.rstrip('/')}/{quote(key, safe='')}"


def _not_found(kind: str, key: str) -> FhirError:
    return FhirError.of(404, "not-found", f"no {kind} '{key[:200]}'")


def _not_yourself(principal: Principal, client_id: str, what: str) -> None:
    if principal.client_id == client_id:
        raise FhirError.of(409, "conflict", f"a client cannot {what} itself (use another admin client)")


async def _enabled_flag(request: Request) -> bool:
    body = await _body(request)
    if not isinstance(body, dict) or set(body) != {"enabled"} or not isinstance(body["enabled"], bool):
        raise FhirError.of(400, "invalid", 'PATCH takes {"enabled": true|false} (nothing else can change)')
    return body["enabled"]


# ---- clients and users -----------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    """One kind of account the admin API lists, makes, shows, enables and deletes."""

    name: str  # "client" or "user": its messages and its registration policies
    key: str  # the path parameter and JSON field naming one
    register: Callable[[Any, Any], Awaitable[dict[str, Any]]]
    list: Callable[[Any], Awaitable[list[Any]]]
    get: Callable[[Any, str], Awaitable[Any]]
    set_enabled: Callable[[Any, str, bool], Awaitable[Any]]
    delete: Callable[[Any, str], Awaitable[bool]]
    guards_itself: bool  # a client may not delete or disable itself (the admin would lock itself out)


_CLIENTS = _Kind(
    "client",
    "client_id",
    registration.register_client,
    accounts.list_clients,
    accounts.get_client,
    accounts.set_client_enabled,
    accounts.delete_client,
    guards_itself=True,
)
_USERS = _Kind(
    "user",
    "username",
    registration.register_user,
    accounts.list_users,
    accounts.get_user,
    accounts.set_user_enabled,
    accounts.delete_user,
    guards_itself=False,
)


async def _with_policies(request: Request, kind: _Kind, found: list[Any]) -> list[dict[str, Any]]:
    keys = [getattr(account, kind.key) for account in found]
    policies = await registration.policies_of(request.app.state.pool, kind.name, keys)
    return [{**a.as_json(), "policies": policies.get(k, [])} for a, k in zip(found, keys, strict=True)]


def _collection(kind: _Kind) -> Handler:
    """GET lists the accounts of a kind, POST makes one (201 with its Location)."""

    async def handler(request: Request) -> Response:
        pool = request.app.state.pool
        if request.method == "POST":
            created = await kind.register(pool, await _body(request))
            await _policies_changed(request)
            log.info("admin: %s '%s' created by '%s'", kind.name, created[kind.key], request.state.principal.subject)
            return _json(created, 201, {"Location": _location(request, created[kind.key])})
        return _json({f"{kind.name}s": await _with_policies(request, kind, await kind.list(pool))})

    return handler


def _item(kind: _Kind) -> Handler:
    """GET shows one account, PATCH enables or disables it, DELETE removes it."""

    async def handler(request: Request) -> Response:
        pool, key = request.app.state.pool, request.path_params[kind.key]
        if request.method == "DELETE":
            if kind.guards_itself:
                _not_yourself(request.state.principal, key, "delete")
            if not await kind.delete(pool, key):
                raise _not_found(kind.name, key)
            await _policies_changed(request)
            log.info("admin: %s '%s' deleted by '%s'", kind.name, key, request.state.principal.subject)
            return Response(status_code=204, headers=_NO_STORE)
        if request.method == "PATCH":
            enabled = await _enabled_flag(request)
            if not enabled and kind.guards_itself:
                _not_yourself(request.state.principal, key, "disable")
            account = await kind.set_enabled(pool, key, enabled)
        else:
            account = await kind.get(pool, key)
        if account is None:
            raise _not_found(kind.name, key)
        return _json((await _with_policies(request, kind, [account]))[0])

    return handler


# ---- access policies (auth/policies.py) -------------------------------------------------


async def _policies_changed(request: Request) -> None:
    """This node sees the change at once; others on their next poll."""
    cache = getattr(request.app.state, "policies", None)
    if cache is not None:
        await cache.refresh()


async def _policies(request: Request) -> Response:
    pool = request.app.state.pool
    if request.method == "POST":
        by = request.state.principal.subject
        created = await policies.put_policy(pool, await _body(request), by, create=True)
        await _policies_changed(request)
        log.info("admin: policy '%s' created by '%s'", created["name"], by)
        return _json(created, 201, {"Location": _location(request, created["name"])})
    return _json({"policies": await policies.list_policies(pool)})


async def _policy(request: Request) -> Response:
    pool, name = request.app.state.pool, request.path_params["name"]
    by = request.state.principal.subject
    if request.method == "DELETE":
        if not await policies.delete_policy(pool, name):
            raise _not_found("policy", name)
        await _policies_changed(request)
        log.info("admin: policy '%s' deleted by '%s'", name, by)
        return Response(status_code=204, headers=_NO_STORE)
    if request.method == "PUT":
        changed = await policies.put_policy(pool, await _body(request), by, name, create=False)
        await _policies_changed(request)
        log.info("admin: policy '%s' version %s stored by '%s'", name, changed["version"], by)
        return _json(changed)
    version = request.query_params.get("version")
    if version is not None and not (version.isdigit() and 0 < int(version) < 2**31):
        raise FhirError.of(400, "invalid", "version must be a positive integer")
    found = await policies.get_policy(pool, name, None if version is None else int(version))
    if found is None:
        raise _not_found("policy", name if version is None else f"{name}' version '{version}")
    return _json(found)


# ---- EHR launch -------------------------------------------------------------------------


async def _launch(request: Request) -> Response:
    """An EHR launch context (patient, optional encounter) for the `launch` parameter of /oauth/authorize."""
    body = await _body(request)
    if not isinstance(body, dict) or not set(body) <= {"patient", "encounter"} or body.get("patient") is None:
        raise FhirError.of(400, "invalid", 'the body is {"patient": id, "encounter": id (optional)}')
    if not all(isinstance(v, str) for v in body.values() if v is not None):
        raise FhirError.of(400, "invalid", "patient and encounter are ids (strings), e.g. 123 or Patient/123")
    request.state.launch_patient = body["patient"]  # the audit record names the patient, never the launch value
    try:
        launch = await create_launch(
            request.app.state.pool, body["patient"], body.get("encounter"), request.state.principal.subject
        )
    except LaunchError as error:
        raise FhirError.of(400, "invalid", str(error)) from None
    return _json({"launch": launch.launch_id, "expires_in": launch.expires_in}, 201)
