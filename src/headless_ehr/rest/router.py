"""Dispatch `/fhir/...` by path shape and method to the interaction handlers.

FHIR URLs are a small fixed grammar (type, id, _history, $operation), so one
dispatcher reads the segments instead of a long route table; it also gives the
right 404 (unknown type) versus 405 (known path, wrong method) with an Allow header.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError
from ..fhir.references import RESOURCE_ID
from ..fhir.summary import is_subset, subset, summary_arguments
from ..search.compartment import Compartment
from . import asynchronous, audit_search, audit_trail
from . import interactions as ix
from .capability import settings_document
from .context import REPLAY_PRINCIPAL, principal_of
from .negotiation import FHIR_JSON, response_media_type, wants_native
from .operations import bulk_import, export, reindex
from .operations.everything import everything
from .operations.subscription_events import events as subscription_events
from .operations.subscription_status import status as subscription_status
from .operations.validate import validate
from .operations.ws_binding_token import ws_binding_token
from .origin import request_origin
from .preconditions import validator_matches
from .responses import base_url, fhir_response, http_date, json_response, outcome_response

log = logging.getLogger("headless_ehr.rest")

COMPARTMENT_TYPES = frozenset({"Patient", "Encounter", "RelatedPerson", "Practitioner", "Device"})
Handler = Callable[[], Awaitable[Response]]
Methods = dict[str, Handler]


def _not_found(what: str) -> FhirError:
    return FhirError.of(404, "not-found", what)


def _operation(request: Request, name: str, resource_type: str | None, rid: str | None) -> Methods:
    methods = _operation_methods(request, name, resource_type, rid)
    return {verb: _policy_checked(request, name, resource_type, run) for verb, run in methods.items()}


def _policy_checked(request: Request, name: str, resource_type: str | None, run: Handler) -> Handler:
    """An operation runs only when the caller's access policy (if any) grants `operation` on the type."""

    async def checked() -> Response:
        principal_of(request).require_operation(name, resource_type)
        return await run()

    return checked


def _operation_methods(request: Request, name: str, resource_type: str | None, rid: str | None) -> Methods:
    if name == "validate" and resource_type is not None:
        return {"POST": lambda: validate(request, resource_type, rid)}
    if name == "everything" and resource_type in ("Patient", "Encounter"):
        return {"GET": lambda: everything(request, resource_type, rid)}
    if resource_type == "Subscription" and name in ("status", "events", "get-ws-binding-token"):
        return _subscription_operation(request, name, rid)
    if name == "export" and (resource_type is None or (resource_type == "Patient" and rid is None)):
        level = "system" if resource_type is None else "patient"
        return {"GET": lambda: export.kick_off(request, level), "POST": lambda: export.kick_off(request, level)}
    if name == "export" and resource_type == "Group" and rid is not None:
        return {
            "GET": lambda: export.kick_off(request, "group", rid),
            "POST": lambda: export.kick_off(request, "group", rid),
        }
    if resource_type is None and "$" + name == export.STATUS_OPERATION:
        return {"GET": lambda: export.status(request), "DELETE": lambda: export.cancel(request)}
    if resource_type is None and "$" + name == export.DOWNLOAD_OPERATION:
        return {"GET": lambda: export.download(request)}
    if name == "import" and resource_type is None:
        return {"POST": lambda: bulk_import.kick_off(request)}
    if resource_type is None and "$" + name == bulk_import.STATUS_OPERATION:
        return {"GET": lambda: bulk_import.status(request), "DELETE": lambda: bulk_import.cancel(request)}
    if resource_type is None and "$" + name == bulk_import.ERRORS_OPERATION:
        return {"GET": lambda: bulk_import.errors(request)}
    if name == "reindex":
        methods: Methods = {"POST": lambda: reindex.start(request, resource_type, rid)}
        if resource_type is None:
            methods["GET"] = lambda: reindex.status(request)
        return methods
    scope = f"{resource_type}/{rid}" if rid else resource_type or "the system"
    raise FhirError.of(404, "not-supported", f"operation ${name} is not supported on {scope}")


def _subscription_operation(request: Request, name: str, rid: str | None) -> Methods:
    """The Subscriptions Backport IG's operations ($events at instance level only; a
    binding token is not idempotent: POST)."""
    if name == "status":
        return {"GET": lambda: subscription_status(request, rid), "POST": lambda: subscription_status(request, rid)}
    if name == "get-ws-binding-token":
        return {"POST": lambda: ws_binding_token(request, rid)}
    if rid is None:
        raise FhirError.of(
            404, "not-supported", "$events is an operation on one Subscription: Subscription/[id]/$events"
        )
    return {"GET": lambda: subscription_events(request, rid), "POST": lambda: subscription_events(request, rid)}


async def _metadata(request: Request) -> Response:
    """The CapabilityStatement (R4 http.html#capabilities), with a validator for caches."""
    q = request.query_params
    mode = q.get("mode", "full")
    if mode not in ("full", "normal"):
        what = "only mode=full and mode=normal are supported" if mode == "terminology" else f"unknown mode '{mode}'"
        raise FhirError.of(400, "not-supported", what)
    summary, elements = summary_arguments(q.get("_summary"), q.get("_elements"))
    doc = settings_document(base_url(request), request.app.state.settings)
    headers = {"ETag": doc.etag, "Last-Modified": http_date(doc.last_modified)}
    if validator_matches(request, doc.etag, doc.last_modified):
        return Response(status_code=304, headers=headers)
    if is_subset(summary, elements):
        return json_response(request, subset(doc.statement, summary, elements), 200, headers)
    return fhir_response(request, doc.body, 200, headers)


def _routes(request: Request, seg: list[str]) -> Methods:
    """The handlers for a path, by method."""
    n = len(seg)
    if n == 0:
        return {"GET": lambda: ix.search(request), "POST": lambda: ix.process_bundle(request)}
    head = seg[0]
    if n == 1 and head == "metadata":
        return {"GET": lambda: _metadata(request)}
    if n == 1 and head == "_history":
        return {"GET": lambda: ix.history(request)}
    if seg == [asynchronous.STATUS_OPERATION]:  # the caller's own request only: no policy grant needed
        return {"GET": lambda: asynchronous.status(request), "DELETE": lambda: asynchronous.cancel(request)}
    if head.startswith("$"):
        return _operation(request, head[1:], None, None) if n == 1 else {}
    if head not in definitions().resource_types:
        raise _not_found(f"unknown resource type '{head}'")
    rtype = head
    if rtype == "AuditEvent" and n <= 2 and (n == 1 or not seg[1].startswith(("$", "_history"))):
        return _audit_routes(request, seg)
    if n == 1:
        return {
            "GET": lambda: ix.search(request, rtype),
            "POST": lambda: ix.create(request, rtype),
            "PUT": lambda: ix.conditional_update(request, rtype),
            "DELETE": lambda: ix.conditional_delete(request, rtype),
            "PATCH": lambda: ix.patch(request, rtype),
        }
    second = seg[1]
    if n == 2 and second == "_search":
        return {"POST": lambda: ix.search(request, rtype)}
    if n == 2 and second == "_history":
        return {"GET": lambda: ix.history(request, rtype)}
    if second.startswith("$"):
        return _operation(request, second[1:], rtype, None) if n == 2 else {}
    rid = second
    if not (RESOURCE_ID.fullmatch(rid) or (n == 2 and request.method == "PUT")):
        # No resource can have it (and PostgreSQL refuses some characters, e.g. NUL).
        # A PUT goes on: its body must carry the same id, which validation refuses (422).
        raise _not_found(f"{rtype}/{rid[:100]} is not known")
    if n == 2:
        return {
            "GET": lambda: ix.read(request, rtype, rid),
            "PUT": lambda: ix.update(request, rtype, rid),
            "DELETE": lambda: ix.delete(request, rtype, rid),
            "PATCH": lambda: ix.patch(request, rtype, rid),
        }
    third = seg[2]
    if third.startswith("$") and n == 3:
        return _operation(request, third[1:], rtype, rid)
    if third == "_history" and n == 3:
        return {"GET": lambda: ix.history(request, rtype, rid)}
    if n == 3 and rtype in COMPARTMENT_TYPES and (third == "*" or third in definitions().resource_types):
        if rtype == "Patient" and third == "AuditEvent":
            return {"GET": lambda: audit_search.search(request, f"Patient/{rid}")}
        compartment = Compartment(rtype, rid)
        target = None if third == "*" else third
        return {"GET": lambda: ix.search(request, target, compartment)}
    if third == "_history" and n == 4:
        vid = seg[3]
        return {"GET": lambda: ix.vread(request, rtype, rid, vid)}
    return {}


def _audit_routes(request: Request, seg: list[str]) -> Methods:
    """AuditEvents come from the audit trail's own table (rest/audit_search.py); none is written here."""
    if len(seg) == 1:
        return {"GET": lambda: audit_search.search(request)}
    if seg[1] == "_search":
        return {"POST": lambda: audit_search.search(request)}
    rid = seg[1]
    return {"GET": lambda: audit_search.read(request, rid)}


def _is_binary_read(request: Request, seg: list[str]) -> bool:
    if request.method not in ("GET", "HEAD") or not seg or seg[0] != "Binary":
        return False
    return (len(seg) == 2 and not seg[1].startswith(("$", "_"))) or (len(seg) == 4 and seg[2] == "_history")


def _too_expensive(request: Request) -> FhirError:
    limit = request.app.state.settings.statement_timeout_ms
    return FhirError.of(
        503,
        "too-costly",
        f"the request was too expensive: a database statement ran longer than {limit} ms and was cancelled;"
        " for a search, narrow the criteria (fewer values, chains or includes, a smaller _count)",
    )


async def fhir_endpoint(request: Request) -> Response:
    """The single ASGI endpoint behind the FHIR base URL; every answer is audited: each
    resource written has its event committed with it (audit/pending.py), and the request's
    own event is recorded before the response leaves (rest/audit_trail.py)."""
    recorder = request.app.state.audit
    if recorder is None:
        return await _answer(request)
    scope = audit_trail.begin(request)
    try:
        response = await _answer(request)
    finally:
        done = audit_trail.end(scope)
    await audit_trail.record(request, response, recorder, done)
    return response


async def _answer(request: Request) -> Response:
    try:
        segments = [s for s in request.path_params.get("path", "").split("/") if s]
        if segments in ([export.DOWNLOAD_OPERATION], [bulk_import.ERRORS_OPERATION]):  # NDJSON, whatever Accept says
            request.state.media_type = FHIR_JSON
        elif _is_binary_read(request, segments) and wants_native(request):
            request.state.native = True  # answer with the content; errors stay OperationOutcomes
            request.state.media_type = FHIR_JSON
        else:
            request.state.media_type = response_media_type(request)
        request_origin(request)  # 400 for a Host this server does not answer to
        replayed = request.scope.get(REPLAY_PRINCIPAL)  # an asynchronous request, run as its caller
        if replayed is not None:
            request.state.principal = replayed
            audit_trail.identify(replayed)
        elif segments != ["metadata"]:  # the CapabilityStatement is public (SMART discovery)
            request.state.principal = await request.app.state.authenticate(request, base_url(request))
            audit_trail.identify(request.state.principal)
        methods = _routes(request, segments)
        if segments[:1] == ["AuditEvent"]:  # the audit trail is append-only, for everyone
            methods = {m: h for m, h in methods.items() if m == "GET" or segments[-1].startswith(("$", "_search"))}
        if not methods:
            raise _not_found(f"no FHIR interaction at '/{'/'.join(segments)}'")
        method = "GET" if request.method == "HEAD" else request.method
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(sorted(methods))
            error = FhirError.of(405, "not-supported", f"{request.method} is not supported here (allowed: {allowed})")
            error.headers["Allow"] = allowed
            raise error
        if asynchronous.wanted(request) and asynchronous.kind_of(method, segments) is not None:
            return await asynchronous.kick_off(request)  # recorded; run later as this caller
        return await handler()
    except FhirError as error:
        request.state.refusal = str(error)[:500]
        return outcome_response(request, error)
    except asyncpg.QueryCanceledError:  # statement_timeout; its transaction was rolled back
        return outcome_response(request, _too_expensive(request))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        fault = FhirError.of(500, "exception", "internal server error")
        return outcome_response(request, fault)
