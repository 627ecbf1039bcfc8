"""What the FHIR endpoint tells the audit trail: the interaction a request was, by path
shape and method, its outcome, who asked and from where (audit/ builds the AuditEvent)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from ..audit.event import Interaction, audit_event
from ..audit.recorder import AuditRecorder
from ..auth.ratelimit import client_address

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


async def record(request: Request, response: Response, recorder: AuditRecorder) -> None:
    """Record the request's AuditEvent: a write's before its response goes, a read's in a batch."""
    try:
        seg = [s for s in request.path_params.get("path", "").split("/") if s]
        if seg == ["metadata"]:
            return
        code, resource = _code(request.method, seg)
        status = response.status_code
        body = getattr(response, "body", b"")
        if code == "transaction" and b'"batch-response"' in body[:400]:
            code = "batch"
        elif code in ("create", "update", "patch") and status < 300:
            where = response.headers.get("location", "")
            if "/_history/" in where:  # the new version: Type/id/_history/v
                resource = "/".join(where.split("/")[-4:])
        principal = getattr(request.state, "principal", None)
        interaction = Interaction(code, status, resource, _patients(request, seg, principal))
        if code.startswith("search") or code == "operation":
            query = request.url.query
            interaction.query = f"{request.url.path}?{query}" if query else request.url.path
            if code.startswith("search") and len(seg) == 3 and seg[0] == "Patient":
                interaction.resource = None
        interaction.description = getattr(request.state, "refusal", None)
        interaction.break_the_glass = getattr(request.state, "consent_overridden", False)
        address = client_address(request.scope, request.app.state.settings.trusted_proxies)
        entry = audit_event(interaction, principal, address)
        if request.method in ("GET", "HEAD") or (len(seg) == 2 and seg[1] == "_search"):
            await recorder.record(entry)
        else:
            await recorder.record_durable(entry)
    except Exception:  # the response stands; the failure is loud in the log
        log.exception("audit: could not record %s %s", request.method, request.url.path)
