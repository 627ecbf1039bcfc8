"""$everything for Patient and Encounter (http://hl7.org/fhir/R4/patient-operation-everything.html).

The compartment's resources (the focal resource included), filtered by _type,
_since and start/end (care dates: see search/care_dates.py), keyset-paged with
_count; the resources they reference (practitioners, organizations, medications,
...) are added as includes.
"""

from __future__ import annotations

from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response

from ...fhir.definitions import definitions
from ...fhir.outcome import FhirError
from ...search.compartment import Compartment, member_types
from ...search.normalize import DateFormatError, date_range
from .. import bundles
from ..context import principal_of, store_of
from ..instants import parse_instant
from ..responses import json_response

_KNOWN = frozenset({"_since", "_type", "_count", "_cursor", "_format", "_pretty", "_id", "start", "end"})


def _care_period(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None] | None:
    """start/end (R4 `date`s: care dates, inclusive, at their own precision) as a window of instants."""
    if start is None and end is None:
        return None
    try:
        low = date_range(start)[0] if start is not None else None
        high = date_range(end)[1] if end is not None else None
    except DateFormatError as exc:
        raise FhirError.of(400, "invalid", f"$everything start/end: {exc}") from None
    if low is not None and high is not None and low > high:
        raise FhirError.of(400, "invalid", "$everything: start is after end")
    return low, high


async def everything(request: Request, resource_type: str, rid: str | None) -> Response:
    q = request.query_params
    unknown = sorted(k for k in q if k not in _KNOWN)
    if unknown:
        raise FhirError.of(400, "not-supported", f"$everything does not take: {', '.join(unknown)}")
    store, principal = store_of(request), principal_of(request)
    if rid is not None:
        await store.read(principal, resource_type, rid)  # 404/410 for a missing focus
        ids: str | tuple[str, ...] | None = rid
    elif "_id" in q:
        ids = tuple(i for i in q["_id"].split(",") if i)
    else:
        ids = None
    types = member_types(resource_type)
    if "_type" in q:
        wanted = [t for t in q["_type"].split(",") if t]
        unknown_types = [t for t in wanted if t not in definitions().resource_types]
        if unknown_types:
            raise FhirError.of(400, "invalid", f"unknown resource type(s): {', '.join(unknown_types)}")
        types = [t for t in types if t in wanted]
    params: list[tuple[str, str]] = []
    if "_since" in q:
        since = parse_instant("_since", q["_since"])
        params.append(("_lastUpdated", "ge" + since.isoformat()))
    if "_count" in q:
        params.append(("_count", q["_count"]))
    if not types:
        raise FhirError.of(400, "invalid", "_type leaves no resource types in the compartment")
    params.append(("_include", "*"))  # what any of them references
    period = _care_period(q.get("start"), q.get("end"))
    settings = request.app.state.settings
    page = await store.search(
        principal,
        types,
        params,
        strict=True,
        cursor=q.get("_cursor"),
        default_count=settings.default_page_size,
        compartment=Compartment(resource_type, ids, period),
    )
    # referenced resources only of the asked-for types, and never another focal-type
    # resource (another Patient reached through Patient.link, say)
    focus = {ids} if isinstance(ids, str) else set(ids or ())
    page.included = [
        r
        for r in page.included
        if ("_type" not in q or r.resource_type in types) and (r.resource_type != resource_type or r.id in focus)
    ]
    drop = ("_cursor",)
    links = [bundles.page_link(request, "self", q.get("_cursor"), drop)]
    if page.next_cursor:
        links.append(bundles.page_link(request, "next", page.next_cursor, drop))
    if page.previous_cursor:
        links.append(bundles.page_link(request, "previous", page.previous_cursor, drop))
    return json_response(request, bundles.searchset(request, page, links))
