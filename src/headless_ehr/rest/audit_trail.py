"""What the FHIR endpoint tells the audit trail: the interaction a request was, by path
shape and method, its outcome, who asked and from where (audit/ builds the AuditEvent)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from ..audit import pending
from ..audit.event import Interaction, audit_event
from ..audit.recorder import AuditRecorder
from ..audit.touched import Draft
from ..auth.principal import Principal
from ..auth.ratelimit import client_address
from .context import store_of

log = logging.getLogger("headless_ehr.audit")

_WRITES = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_PATIENT_PARAMS = ("patient", "subject", "patient:Patient", "subject:Patient")


def _code(method: str, seg: list[str]) -> tuple[str, str | None]:
    """The restful-interaction code and the resource (Type/id) a request addresses."""
    n = len(seg)
    read = method in ("GET", "HEAD")
    if n == 0:
        return ("search-system" if read else "transaction"), None
    if seg[-1].startswith("$"):
        return "operation", "/".join(seg[:-1]) or None
    if seg[0] == "_history":
        return "history-system", None
    if n == 1:
        return ("search-type" if read else _WRITES.get(method, "operation")), None
    if seg[1] == "_search":
        return "search-type", None
    if seg[1] == "_history":
        return "history-type", None
    resource = f"{seg[0]}/{seg[1]}"
    if n == 2:
        return ("read" if read else _WRITES.get(method, "operation")), resource
    if seg[2] == "_history":
        return ("history-instance", resource) if n == 3 else ("vread", f"{resource}/_history/{seg[3]}")
    return "search-type", None  # a compartment search: Patient/1/Observation


def _patients(request: Request, seg: list[str], principal: object) -> list[str]:
    """The patients a request is about, as far as its URL and token say."""
    found = []
    if len(seg) >= 2 and seg[0] == "Patient" and not seg[1].startswith(("$", "_")):
        found.append(f"Patient/{seg[1]}")
    context = getattr(principal, "patient", None)
    if context:
        found.append(f"Patient/{context}")
    if request.method in ("GET", "HEAD") and request.scope.get("query_string"):
        for name, value in request.query_params.multi_items():
            if name in _PATIENT_PARAMS:
                for one in value.split(","):
                    ref = one.rsplit("/_history", 1)[0]
                    if ref.startswith("Patient/"):
                        found.append(ref)
                    elif "/" not in ref and name.startswith("patient") and ref:
                        found.append(f"Patient/{ref}")
    return found


async def _overrode_consent(request: Request, principal: Principal, returned: list[tuple[str, str]]) -> bool:
    """Whether a Consent denies the caller, but for its break-the-glass, anything the store
    returned: then the event says BTG overrode it."""
    try:
        return await store_of(request).consent_denies(principal, returned)
    except Exception:  # the event then says BTG without the override
        log.exception("consent: could not check what break-the-glass returned")
        return False


def begin(request: Request) -> object:
    """Open the request's audit scope: the store records each write's event in it, and a
    plain read's (rest/audit_trail.py `_code` says which interaction the request is)."""
    settings = request.app.state.settings
    address = client_address(request.scope, settings.trusted_proxies)
    seg = [s for s in request.scope["path_params"].get("path", "").split("/") if s]
    code, resource = _code(request.scope["method"], seg)
    return pending.begin(None, address, settings.audit_sync_commit, code, resource, seg == ["metadata"])


def identify(principal: Principal) -> None:
    """The caller, once authenticated, for the events of the writes that follow."""
    scope = pending.current()
    if scope is not None:
        scope.principal = principal


def end(token: object) -> pending.AuditScope:
    """Close the scope: what the request's writes recorded and what the store returned."""
    return pending.end(token)  # type: ignore[arg-type]


def _queued(scope: pending.AuditScope) -> bool:
    """The request's event went in already: with its change (writes) or with its read."""
    if scope.read_recorded:
        return True
    return bool(scope.writes) and scope.code in ("create", "update", "patch", "delete")


async def record(request: Request, response: Response, recorder: AuditRecorder, scope: pending.AuditScope) -> None:
    """Record the request's AuditEvent before its response goes (batched with other
    requests'). A single create, update, patch or delete that succeeded already has its
    event, committed with the change, and a plain read of a Patient with the read; a
    refused or failed one gets it here."""
    try:
        status = response.status_code
        if scope.unaudited or (status < 400 and _queued(scope)):
            return
        state = request.scope.get("state") or {}  # request.state's dict: read without State's exceptions
        code, resource = scope.code, scope.resource
        body = getattr(response, "body", b"")
        if code == "transaction" and b'"batch-response"' in body[:400]:
            code = "batch"
        elif code in ("create", "update", "patch") and status < 300:
            where = response.headers.get("location", "")
            if "/_history/" in where:  # the new version: Type/id/_history/v
                resource = "/".join(where.split("/")[-4:])
        seg = [s for s in request.path_params.get("path", "").split("/") if s]
        principal = state.get("principal")
        interaction = Interaction(code, status, resource, _patients(request, seg, principal))
        if code.startswith("search") or code == "operation":
            query = request.url.query
            interaction.query = f"{request.url.path}?{query}" if query else request.url.path
            if code.startswith("search") and len(seg) == 3 and seg[0] == "Patient":
                interaction.resource = None
        interaction.description = state.get("refusal")
        if principal is not None and principal.break_the_glass and scope.returned:
            interaction.break_the_glass = await _overrode_consent(request, principal, list(scope.returned))
        address = scope.address
        returned = list(scope.returned)
        if returned:  # what the store returned: the patients themselves now, others' patients by lookup
            interaction.patients += [f"Patient/{rid}" for rtype, rid in returned if rtype == "Patient"]
            others = [key for key in returned if key[0] != "Patient"]
            if others:
                await recorder.record(Draft(interaction, principal, address, others))
                return
        await recorder.record(audit_event(interaction, principal, address))
    except Exception:  # the response stands; the failure is loud in the log
        log.exception("audit: could not record %s %s", request.method, request.url.path)
