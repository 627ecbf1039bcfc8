"""Dispatch `/fhir/...` by path shape and method to the interaction handlers.

FHIR URLs are a small fixed grammar (type, id, _history, $operation), so one
dispatcher reads the segments instead of a long route table; it also gives the
right 404 (unknown type) versus 405 (known path, wrong method) with an Allow header.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError
from ..search.compartment import Compartment
from . import interactions as ix
from .capability import capability_statement
from .negotiation import response_media_type
from .operations import reindex
from .operations.everything import everything
from .operations.validate import validate
from .responses import base_url, json_response, outcome_response

log = logging.getLogger("headless_ehr.rest")

COMPARTMENT_TYPES = frozenset({"Patient", "Encounter", "RelatedPerson", "Practitioner", "Device"})
Handler = Callable[[], Awaitable[Response]]
Methods = dict[str, Handler]


def _not_found(what: str) -> FhirError:
    return FhirError.of(404, "not-found", what)


def _operation(request: Request, name: str, resource_type: str | None, rid: str | None) -> Methods:
    if name == "validate" and resource_type is not None:
        return {"POST": lambda: validate(request, resource_type, rid)}
    if name == "everything" and resource_type in ("Patient", "Encounter"):
        return {"GET": lambda: everything(request, resource_type, rid)}
    if name == "reindex":
        methods: Methods = {"POST": lambda: reindex.start(request, resource_type, rid)}
        if resource_type is None:
            methods["GET"] = lambda: reindex.status(request)
        return methods
    scope = f"{resource_type}/{rid}" if rid else resource_type or "the system"
    raise FhirError.of(404, "not-supported", f"operation ${name} is not supported on {scope}")


async def _metadata(request: Request) -> Response:
    settings = request.app.state.settings
    return json_response(request, capability_statement(base_url(request), settings.conditional_delete))


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
    if head.startswith("$"):
        return _operation(request, head[1:], None, None) if n == 1 else {}
    if head not in definitions().resource_types:
        raise _not_found(f"unknown resource type '{head}'")
    rtype = head
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
        compartment = Compartment(rtype, rid)
        target = None if third == "*" else third
        return {"GET": lambda: ix.search(request, target, compartment)}
    if third == "_history" and n == 4:
        vid = seg[3]
        return {"GET": lambda: ix.vread(request, rtype, rid, vid)}
    return {}


async def fhir_endpoint(request: Request) -> Response:
    """The single ASGI endpoint behind the FHIR base URL."""
    try:
        request.state.media_type = response_media_type(request)
        request.state.principal = request.app.state.authenticate(request)
        segments = [s for s in request.path_params.get("path", "").split("/") if s]
        methods = _routes(request, segments)
        if not methods:
            raise _not_found(f"no FHIR interaction at '/{'/'.join(segments)}'")
        method = "GET" if request.method == "HEAD" else request.method
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(sorted(methods))
            error = FhirError.of(405, "not-supported", f"{request.method} is not supported here (allowed: {allowed})")
            error.headers["Allow"] = allowed
            raise error
        return await handler()
    except FhirError as error:
        return outcome_response(request, error)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        fault = FhirError.of(500, "exception", "internal server error")
        return outcome_response(request, fault)
