"""Instance and type interactions: read, vread, create, update, delete, search, history."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from ..fhir import json as fhir_json
from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError
from ..fhir.patch import apply_fhirpath_patch, apply_json_patch
from ..fhir.summary import is_subset, subset, summary_arguments
from ..search.compartment import Compartment, member_types
from ..search.criteria import Criteria, conditional_criteria
from ..search.paging import parse_count
from ..search.parse import RESULT_PARAMETERS
from ..search.registry import search_params
from ..search.sql import ANY_TYPE
from ..store import ResourceStore, StoredResource, WriteOutcome
from ..store.transaction import BundleProcessor
from . import bundles, offload
from .binary import binary_from_body, native_response
from .bundles import seen
from .capability import settings_document
from .context import principal_of, replay_connection, store_of
from .instants import parse_instant
from .negotiation import (
    native_content_type,
    parse_resource,
    prefer,
    read_body,
    read_json_body,
    require_json_content,
)
from .preconditions import if_match, if_none_exist, not_modified
from .responses import (
    base_url,
    fhir_response,
    info_outcome,
    json_response,
    location,
    version_headers,
)


def _body_limit(request: Request) -> int:
    return request.app.state.settings.max_body_bytes


def _write_response(request: Request, stored: StoredResource, status: int, message: str) -> Response:
    headers = version_headers(stored)
    headers["Location"] = location(request, stored)
    wanted = prefer(request).get("return", "representation")
    if wanted == "minimal":
        return fhir_response(request, None, status, headers)
    if wanted.lower() == "operationoutcome":
        return json_response(request, info_outcome(message), status, headers)
    return fhir_response(request, seen(request, stored).content, status, headers)


def _criteria(request: Request, resource_type: str, what: str) -> Criteria:
    """The conditional criteria in the URL's query."""
    return conditional_criteria(resource_type, request.query_params.multi_items(), what)


def _representation(request: Request, stored: StoredResource, headers: dict[str, str]) -> Response:
    """A read's body: the stored bytes, a _summary/_elements subset of them, or a Binary's own content."""
    stored = seen(request, stored)
    if getattr(request.state, "native", False):
        return native_response(stored, headers)
    if request.scope.get("query_string"):  # skip parsing the query on the common bare read
        q = request.query_params
        summary, elements = summary_arguments(q.get("_summary"), q.get("_elements"))
        if is_subset(summary, elements):
            return json_response(request, subset(fhir_json.loads(stored.content), summary, elements), 200, headers)
    return fhir_response(request, stored.content, 200, headers)


async def read(request: Request, resource_type: str, rid: str) -> Response:
    stored = await store_of(request).read(principal_of(request), resource_type, rid)
    headers = version_headers(stored)
    if not_modified(request, stored):
        return Response(status_code=304, headers=headers)
    return _representation(request, stored, headers)


async def vread(request: Request, resource_type: str, rid: str, vid: str) -> Response:
    stored = await store_of(request).vread(principal_of(request), resource_type, rid, vid)
    return _representation(request, stored, version_headers(stored))


async def _resource_body(
    request: Request, resource_type: str, rid: str | None = None
) -> tuple[int, Callable[[], dict[str, Any]]]:
    """The body's size and the resource in it, parsed when called (off the event loop for
    a large body); for Binary, non-FHIR content becomes the Binary's data."""
    if resource_type == "Binary":
        content_type = native_content_type(request)
        if content_type is not None:
            binary = await binary_from_body(request, content_type, _body_limit(request), rid)
            return len(binary.get("data", "")), lambda: binary
    body = await read_json_body(request, _body_limit(request))
    return len(body), lambda: parse_resource(body)


async def create(request: Request, resource_type: str) -> Response:
    size, resource = await _resource_body(request, resource_type)

    async def work(store: ResourceStore, _: object) -> Response:
        outcome: WriteOutcome = await store.create(
            principal_of(request),
            resource(),
            if_none_exist=if_none_exist(request, resource_type),
            resource_type=resource_type,
        )
        if outcome.matched:
            return _write_response(request, outcome.stored, 200, "an existing resource matched")
        return _write_response(request, outcome.stored, 201, f"created {resource_type}/{outcome.stored.id}")

    return await offload.run(request, size, work)


async def update(request: Request, resource_type: str, rid: str) -> Response:
    size, resource = await _resource_body(request, resource_type, rid)

    async def work(store: ResourceStore, _: object) -> Response:
        outcome = await store.update(principal_of(request), resource_type, rid, resource(), if_match=if_match(request))
        status = 201 if outcome.created else 200
        return _write_response(request, outcome.stored, status, f"updated {resource_type}/{rid}")

    return await offload.run(request, size, work)


async def conditional_update(request: Request, resource_type: str) -> Response:
    criteria = _criteria(request, resource_type, "update")
    size, resource = await _resource_body(request, resource_type)

    async def work(store: ResourceStore, _: object) -> Response:
        outcome = await store.conditional_update(
            principal_of(request), criteria, resource(), if_match=if_match(request)
        )
        status = 201 if outcome.created else 200
        return _write_response(request, outcome.stored, status, f"updated {resource_type}/{outcome.stored.id}")

    return await offload.run(request, size, work)


def _delete_response(request: Request, stored: StoredResource | None, what: str) -> Response:
    headers = {"ETag": f'W/"{stored.version_id}"'} if stored else {}
    if prefer(request).get("return") == "minimal":
        return Response(status_code=204, headers=headers)
    message = f"deleted {what}" if stored else f"nothing to delete: {what}"
    return json_response(request, info_outcome(message), 200, headers)


async def delete(request: Request, resource_type: str, rid: str) -> Response:
    stored = await store_of(request).delete(principal_of(request), resource_type, rid, if_match=if_match(request))
    if stored is None:  # unknown or already deleted: success with no content (R4 http.html#delete)
        return Response(status_code=204)
    return _delete_response(request, stored, f"{resource_type}/{rid}")


async def conditional_delete(request: Request, resource_type: str) -> Response:
    """Delete the match; with EHR_CONDITIONAL_DELETE=multiple, every match (else 412)."""
    multiple = request.app.state.settings.conditional_delete == "multiple"
    criteria = _criteria(request, resource_type, "delete")
    deleted = await store_of(request).conditional_delete(principal_of(request), criteria, multiple=multiple)
    if len(deleted) <= 1:
        stored = deleted[0] if deleted else None
        what = f"{resource_type}/{stored.id}" if stored else f"no {resource_type} matched"
        return _delete_response(request, stored, what)
    if prefer(request).get("return") == "minimal":  # several: no one ETag to give
        return Response(status_code=204)
    return json_response(request, info_outcome(f"deleted {len(deleted)} {resource_type} resources"), 200)


async def request_search_params(request: Request) -> list[tuple[str, str]]:
    params = list(request.query_params.multi_items())
    if request.method == "POST":
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            raise FhirError.of(415, "not-supported", "_search takes application/x-www-form-urlencoded")
        body = await read_body(request, _body_limit(request))
        try:
            params += parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise FhirError.of(400, "invalid", "the form body is not UTF-8") from None
    return params


def _types_for(params: list[tuple[str, str]], resource_type: str | None, compartment: Compartment | None) -> list[str]:
    if resource_type is not None:
        return [resource_type]
    if compartment is not None:
        return member_types(compartment.type)
    listed = [t for k, v in params if k == "_type" for t in v.split(",") if t]
    unknown = [t for t in listed if t not in definitions().resource_types]
    if unknown:
        raise FhirError.of(400, "invalid", f"unknown resource type(s) in _type: {', '.join(unknown)}")
    if listed:
        return listed
    common = set(search_params(ANY_TYPE)) | RESULT_PARAMETERS | {"_has", "_list"}
    specific = sorted({k.split(":", 1)[0].split(".", 1)[0] for k, _ in params} - common)
    if specific:
        raise FhirError.of(
            400, "invalid", f"searching all types takes only common parameters; add _type for: {', '.join(specific)}"
        )
    return [ANY_TYPE]


async def search(
    request: Request, resource_type: str | None = None, compartment: Compartment | None = None
) -> Response:
    """Type search, system search (`_type`) and compartment search."""
    given = await request_search_params(request)
    cursor = next((v for k, v in given if k == "_cursor"), None)
    params = [(k, v) for k, v in given if k not in ("_cursor", "_format", "_pretty")]
    types = _types_for(params, resource_type, compartment)
    strict = prefer(request).get("handling") == "strict"
    settings = request.app.state.settings
    page = await store_of(request).search(
        principal_of(request),
        types,
        params,
        strict=strict,
        cursor=cursor,
        default_count=settings.default_page_size,
        compartment=compartment,
    )

    def link(relation: str, at: str | None) -> dict[str, str]:  # with the form body's criteria too
        return bundles.page_link(request, relation, at, ("_cursor",), given)

    links = [link("self", cursor)]
    if cursor:
        links.append(link("first", None))
    if page.next_cursor:
        links.append(link("next", page.next_cursor))
    if page.previous_cursor:
        links.append(link("previous", page.previous_cursor))
    return json_response(request, bundles.searchset(request, page, links))


def _history_args(request: Request) -> dict[str, object]:
    q = request.query_params
    settings = request.app.state.settings
    count = settings.default_page_size
    if "_count" in q:
        count = parse_count(q["_count"], settings.max_page_size)
    since = parse_instant("_since", q["_since"]) if "_since" in q else None
    known = {"_count", "_since", "_cursor", "_format", "_pretty"}
    unknown = [k for k in q if k not in known]
    if unknown and prefer(request).get("handling") == "strict":
        raise FhirError.of(400, "not-supported", f"unsupported history parameter(s): {', '.join(unknown)}")
    return {"since": since, "count": count, "cursor": q.get("_cursor")}


async def history(request: Request, resource_type: str | None = None, rid: str | None = None) -> Response:
    args = _history_args(request)
    if rid is not None:  # 404 for an unknown resource rather than an empty bundle
        try:
            await store_of(request).read(principal_of(request), resource_type or "", rid)
        except FhirError as exc:
            if exc.status != 410:
                raise
    page = await store_of(request).history(principal_of(request), resource_type, rid, **args)  # type: ignore[arg-type]
    links = [bundles.page_link(request, "self", args["cursor"], ("_cursor",))]  # type: ignore[arg-type]
    if page.next_cursor:
        links.append(bundles.page_link(request, "next", page.next_cursor, ("_cursor",)))
    return json_response(request, bundles.history(request, page.entries, page.total, links, page.settled))


async def process_bundle(request: Request) -> Response:
    """POST [base] with a transaction or batch Bundle."""
    body = await read_json_body(request, _body_limit(request))
    base = base_url(request)
    settings = request.app.state.settings
    conditional_delete = settings.conditional_delete

    async def work(store: ResourceStore, conn: asyncpg.Connection | None) -> Response:
        bundle = parse_resource(body)
        if bundle.get("resourceType") != "Bundle":
            raise FhirError.of(400, "invalid", "POST to the base URL takes a transaction or batch Bundle")
        kind = bundle.get("type")
        processor = BundleProcessor(
            store,
            principal_of(request),
            base,
            conditional_delete=conditional_delete,
            capabilities=lambda: settings_document(base, settings).body,
        )
        representation = prefer(request).get("return") == "representation"
        if kind == "transaction":
            result = await processor.transaction(bundle, representation=representation, conn=conn)
        elif kind == "batch":
            # an asynchronous batch commits with its completion (each entry in a savepoint)
            result = await processor.batch(bundle, representation=representation, conn=replay_connection(request))
        else:
            raise FhirError.of(400, "invalid", f"Bundle.type must be transaction or batch, not '{kind}'", "Bundle.type")
        return json_response(request, bundles.bundle_response(request, result))

    return await offload.run(request, len(body), work)


JSON_PATCH = "application/json-patch+json"


async def _patch_function(request: Request) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The patch in the body: JSON Patch or a FHIRPath Patch Parameters resource."""
    media = require_json_content(request, JSON_PATCH)
    body = await read_body(request, _body_limit(request))
    try:
        document = fhir_json.loads(body)
    except fhir_json.JsonError as exc:
        raise FhirError.of(400, "structure", str(exc)) from None
    if media == JSON_PATCH:
        return lambda resource: apply_json_patch(resource, document)
    return lambda resource: apply_fhirpath_patch(resource, document)


async def patch(request: Request, resource_type: str, rid: str | None = None) -> Response:
    criteria = _criteria(request, resource_type, "patch") if rid is None else None
    apply = await _patch_function(request)
    store, principal = store_of(request), principal_of(request)
    if criteria is not None:
        outcome = await store.conditional_patch(principal, criteria, apply, if_match=if_match(request))
    else:
        assert rid is not None
        outcome = await store.patch(principal, resource_type, rid, apply, if_match=if_match(request))
    return _write_response(request, outcome.stored, 200, f"patched {resource_type}/{outcome.stored.id}")
