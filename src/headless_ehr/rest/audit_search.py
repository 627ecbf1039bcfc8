"""`GET /fhir/AuditEvent` and `GET /fhir/AuditEvent/{id}`: the audit log, read from its own
hash-chained table (audit/), not from the resource tables.

System clients with a system-level AuditEvent grant read every event; a patient-context
token with an AuditEvent read scope reads the events about its own patient ("who looked at
my record"); anyone else is 403.
Supported parameters: patient, agent, entity, subtype, outcome, action, address, date
(eq/gt/ge/lt/le), _id, _count, _sort (date or -date).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..audit.query import ARRAY_PARAMS, TEXT_PARAMS, AuditQuery
from ..auth.policies import SUBSETTED
from ..auth.scopes import PERMISSION
from ..fhir.outcome import FhirError
from ..search.normalize import DateFormatError, date_range
from ..search.paging import decode_cursor, encode_cursor, parse_count
from ..search.parse import split_prefix
from .bundles import page_link
from .context import principal_of
from .interactions import request_search_params
from .responses import base_url, fhir_response, json_response

_IGNORED = frozenset({"_format", "_pretty"})  # content negotiation reads them
_SUPPORTED = sorted({*ARRAY_PARAMS, *TEXT_PARAMS, "date", "_id", "_count", "_sort", "_cursor"})
_PREFIXES = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _restriction(request: Request, interaction: str) -> str | None:
    """The patient this caller's audit reads are limited to (None: all); 403 when it may read none."""
    principal = principal_of(request)
    if principal.grants is None:
        return None
    # a system client with a system-level grant on AuditEvent, not any system token (system/Observation.rs)
    letter = PERMISSION[interaction]
    if any(g.context == "system" and g.covers(letter, "AuditEvent") for g in principal.grants) and principal.allows(
        interaction, "AuditEvent"
    ):
        return None
    if principal.patient and principal.allows(interaction, "AuditEvent"):
        return f"Patient/{principal.patient}"
    raise FhirError.of(
        403,
        "forbidden",
        "AuditEvents are readable by system clients with an AuditEvent grant,"
        " and by patient-context tokens for their own patient",
    )


def _values(name: str, raw: str) -> list[str]:
    values = [v for v in raw.split(",") if v]
    if not values:
        raise FhirError.of(400, "invalid", f"parameter '{name}' has no value")
    if name == "patient":
        return [v if v.startswith("Patient/") else f"Patient/{v}" for v in values]
    if name == "subtype":  # a token: [system|]code, the system being restful-interaction
        return [v.rsplit("|", 1)[-1] for v in values]
    return values


def _date(query: AuditQuery, raw: str) -> None:
    ranges = []
    for value in raw.split(","):
        prefix, text = split_prefix(value)
        if prefix not in _PREFIXES and prefix != "eq":
            raise FhirError.of(400, "not-supported", f"date: prefix '{prefix}' (AuditEvent takes eq, gt, ge, lt, le)")
        try:
            low, high = date_range(text)
        except DateFormatError:
            raise FhirError.of(400, "invalid", f"date: '{value[:50]}' is not a date, dateTime or instant") from None
        if prefix == "eq":
            ranges.append((low, high))
        elif "," in raw:
            raise FhirError.of(400, "not-supported", "date: a prefixed value cannot be one of several (OR) values")
        else:
            query.recorded(_PREFIXES[prefix], low if prefix in ("ge", "lt") else high)
    if ranges:
        query.recorded_any(ranges)


def _criteria(request: Request, params: list[tuple[str, str]]) -> tuple[AuditQuery, int, int | None, bool]:
    settings = request.app.state.settings
    query = AuditQuery()
    count, cursor, descending = settings.default_page_size, None, False
    for name, raw in params:
        if "\x00" in name or "\x00" in raw:  # PostgreSQL text cannot hold it (as search/parse.py)
            raise FhirError.of(400, "invalid", "search parameters may not contain NUL characters")
        if name in _IGNORED:
            continue
        if name in ARRAY_PARAMS or name in TEXT_PARAMS:
            query.any_of(name, _values(name, raw))
        elif name == "date":
            _date(query, raw)
        elif name == "_id":
            query.ids(_values(name, raw))
        elif name == "_count":
            count = parse_count(raw, settings.max_page_size)
        elif name == "_sort":
            if raw not in ("date", "-date"):
                raise FhirError.of(400, "not-supported", "AuditEvent searches sort by date or -date only")
            descending = raw == "-date"
        elif name == "_cursor":
            payload = decode_cursor(raw)
            if type(payload) is not int or not 0 <= payload < 2**63:  # a seq (bigint); bool is an int too
                raise FhirError.of(400, "invalid", "malformed paging cursor")
            cursor = payload
        else:
            raise FhirError.of(
                400,
                "not-supported",
                f"AuditEvent search does not support '{name[:50]}' (supported: {', '.join(_SUPPORTED)})",
            )
    return query, count, cursor, descending


async def search(request: Request, patient: str | None = None) -> Response:
    """A searchset of AuditEvents, oldest first unless `_sort=-date`; paged by cursor."""
    only = _restriction(request, "search")
    params = await request_search_params(request)  # the query, and a POST's form body (415 unless a form)
    query, count, cursor, descending = _criteria(request, params)
    for must in (only, patient):
        if must is not None:
            query.any_of("patient", [must])
    rows = await query.page(request.app.state.pool, count + 1, cursor, descending) if count else []
    base = base_url(request)
    entries: list[Any] = [
        {
            "fullUrl": f"{base}/AuditEvent/{row['id']}",
            "resource": orjson.Fragment(_shown(bytes(row["content"]), only)),
            "search": {"mode": "match"},
        }
        for row in rows[:count]
    ]
    links = [page_link(request, "self", None, ("_cursor",), params)]
    if len(rows) > count:
        links.append(page_link(request, "next", encode_cursor(rows[count - 1]["seq"]), ("_cursor",), params))
    bundle = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "searchset", "link": links, "entry": entries}
    return json_response(request, bundle)


async def read(request: Request, rid: str) -> Response:
    """One AuditEvent, as recorded (404 when unknown or about another patient)."""
    only = _restriction(request, "read")
    try:
        key = uuid.UUID(rid)
    except ValueError:
        key = None
    row = None
    if key is not None:
        row = await request.app.state.pool.fetchrow("SELECT content, patients FROM audit_event WHERE id = $1", key)
    if row is None or (only is not None and only not in row["patients"]):
        raise FhirError.of(404, "not-found", f"AuditEvent/{rid[:100]} is not known")
    return fhir_response(request, _shown(bytes(row["content"]), only))


def _shown(content: bytes, patient: str | None) -> bytes:
    """An event as a patient may see it: without the other patients it names and without
    the query (which may name them too), tagged SUBSETTED; as recorded for everyone else."""
    if patient is None:
        return content
    event = orjson.loads(content)
    entities = event.get("entity", [])
    kept = [
        e for e in entities if "query" not in e and not _other_patient(e.get("what", {}).get("reference", ""), patient)
    ]
    if len(kept) == len(entities):
        return content
    event["entity"] = kept
    event.setdefault("meta", {}).setdefault("tag", []).append(SUBSETTED)
    return orjson.dumps(event)


def _other_patient(reference: str, patient: str) -> bool:
    return reference.startswith("Patient/") and reference.split("/_history/", 1)[0] != patient
