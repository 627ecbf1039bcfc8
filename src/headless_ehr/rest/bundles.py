"""searchset and history Bundles, embedding stored bytes without re-parsing them."""

from __future__ import annotations

import functools
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request

from ..auth.policies import masked
from ..fhir import json as fhir_json
from ..fhir.outcome import operation_outcome
from ..fhir.summary import subset
from ..store import SearchPage, StoredResource
from ..store.repository import format_instant
from ..store.transaction import BundleResult
from .context import principal_of
from .responses import base_url, etag


def page_link(
    request: Request,
    relation: str,
    cursor: str | None,
    drop: tuple[str, ...],
    params: list[tuple[str, str]] | None = None,
) -> dict[str, str]:
    """A paging link: the request's own URL with the cursor replaced.

    params: the criteria to carry instead of the query string's. A `POST [type]/_search`
    passes its query and form parameters together, so that its links are GET URLs
    on [type] that continue the same search.
    """
    if params is None:
        params = list(request.query_params.multi_items())
    params = [(k, v) for k, v in params if k not in drop]
    if cursor:
        params.append(("_cursor", cursor))
    path = request.url.path[len(request.app.state.settings.base_path) :]
    if request.method == "POST" and path.endswith("/_search"):
        path = path[: -len("/_search")]
    return {"relation": relation, "url": base_url(request) + path + ("?" + urlencode(params) if params else "")}


def _bundle(
    kind: str, total: int | None, links: list[dict[str, str]], entries: list[Any], meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "id": str(uuid.uuid4())}
    if meta:
        out["meta"] = meta
    out["type"] = kind
    if total is not None:
        out["total"] = total
    out["link"] = links
    out["entry"] = entries
    return out


MAX_RETURNED_CHECKED = 5000  # resources of one break-the-glass request checked against Consents


def seen(request: Request, stored: StoredResource) -> StoredResource:
    """A stored resource as the caller may see it: its access policy's hiddenElements removed."""
    principal = principal_of(request)
    if principal.break_the_glass:  # did BTG override a Consent? asked once at the end (rest/router.py)
        returned = getattr(request.state, "returned", None)
        if returned is None:
            returned = request.state.returned = []
        if len(returned) < MAX_RETURNED_CHECKED:
            returned.append((stored.resource_type, stored.id))
    if principal.policy is None or stored.content is None:
        return stored
    content = masked(principal, stored.resource_type, stored.content)
    return stored if content is stored.content else replace(stored, content=content)


def _search_entry(
    base: str, stored: StoredResource, mode: str, summary: str | None, elements: list[str] | None
) -> dict[str, Any]:
    if summary in (None, "false") and not elements:
        resource: Any = orjson.Fragment(stored.content)
    else:
        resource = subset(fhir_json.loads(stored.content), summary, elements)
    # R4 search.html#contained: a contained resource's fullUrl is its container's plus #id
    where = f"{stored.container}#{stored.id}" if stored.container else f"{stored.resource_type}/{stored.id}"
    return {
        "fullUrl": f"{base}/{where}",
        "resource": resource,
        "search": {"mode": mode},
    }


def searchset(request: Request, page: SearchPage, links: list[dict[str, str]]) -> dict[str, Any]:
    base = base_url(request)
    summary = page.request.summary if page.request else None
    elements = page.request.elements if page.request else None
    entries: list[Any] = [_search_entry(base, seen(request, s), "match", summary, elements) for s in page.entries]
    entries += [_search_entry(base, seen(request, s), "include", summary, elements) for s in page.included]
    if page.issues:
        entries.append({"resource": operation_outcome(page.issues), "search": {"mode": "outcome"}})
    return _bundle("searchset", page.total, links, entries)


_HISTORY_STATUS = {
    "POST": "201 Created",
    "PUT": "200 OK",
    "PATCH": "200 OK",
    "DELETE": "204 No Content",
}


def history(
    request: Request,
    stored: list[StoredResource],
    total: int | None,
    links: list[dict[str, str]],
    settled: datetime | None = None,
) -> dict[str, Any]:
    """A history Bundle; its meta.lastUpdated is the instant every version below which
    is settled (store history()): the `_since` of the next poll."""
    base = base_url(request)
    entries = []
    for s in map(functools.partial(seen, request), stored):
        method = s.method or "PUT"
        entry: dict[str, Any] = {"fullUrl": f"{base}/{s.resource_type}/{s.id}"}
        if s.content is not None:
            entry["resource"] = orjson.Fragment(s.content)
        entry["request"] = {
            "method": method,
            "url": f"{s.resource_type}/{s.id}" if method != "POST" else s.resource_type,
        }
        entry["response"] = {
            "status": _HISTORY_STATUS.get(method, "200 OK"),
            "etag": etag(s.version_id),
            "lastModified": format_instant(s.last_updated),
        }
        entries.append(entry)
    meta = {"lastUpdated": format_instant(settled)} if settled is not None else None
    return _bundle("history", total, links, entries, meta)


def bundle_response(request: Request, result: BundleResult) -> dict[str, Any]:
    """A transaction-response or batch-response Bundle."""
    base = base_url(request)
    entries = []
    for item in result.items:
        entry: dict[str, Any] = {}
        if item.stored is not None:
            item = replace(item, stored=seen(request, item.stored))
            entry["fullUrl"] = f"{base}/{item.stored.resource_type}/{item.stored.id}"
            if item.with_resource and item.stored.content is not None:
                entry["resource"] = orjson.Fragment(item.stored.content)
        if item.page is not None:
            entry["resource"] = searchset(request, item.page, [])
        if item.content is not None:
            entry["resource"] = orjson.Fragment(item.content)
        entry["response"] = item.response
        entries.append(entry)
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": result.type,
        "entry": entries,
    }
