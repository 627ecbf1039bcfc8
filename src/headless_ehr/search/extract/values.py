"""Typed conversion: a FHIR value selected by a parameter's expression → index values.

Each SearchParameter type has one reader per FHIR data type (`TOKEN["Coding"]`,
`DATE["Period"]`, ...). A reader takes the JSON value and returns value tuples
without the parameter code; `row_converter` prepends the code and appends to the
right list of a `Sink`. The FHIR type is known statically for expressions compiled
by `compile.py`; values from the FHIRPath engine are typed by their shape
(`infer_type`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from ..normalize import MAX_INSTANT, MIN_INSTANT, DateFormatError, date_range, normalize_string
from ..normalize import number_range as _number_range
from .references import parse_canonical, parse_reference
from .ucum import UCUM, canonical

ISO4217 = "urn:iso:std:iso:4217"
STRING_LIMIT = 512  # characters of a normalised string value kept (btree entries are bounded)
KEY_LIMIT = 600  # longer token codes, URIs and URLs are not indexed (btree entry limit)

QUANTITY_TYPES = frozenset({"Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity"})
NUMBER_TYPES = frozenset({"integer", "decimal", "positiveInt", "unsignedInt"})
DATE_TYPES = frozenset({"date", "dateTime", "instant"})
URI_TYPES = frozenset({"uri", "url", "canonical", "oid", "uuid"})
STRING_TYPES = frozenset({"string", "code", "id", "markdown", "time"}) | URI_TYPES | DATE_TYPES
_INF, _NEG_INF = Decimal("Infinity"), Decimal("-Infinity")


class Sink:
    """The rows of one resource while they are collected (lists of IndexRows tuples)."""

    __slots__ = (
        "composite",
        "date",
        "memo",
        "number",
        "position",
        "quantity",
        "reference",
        "resource",
        "string",
        "token",
        "uri",
    )

    def __init__(self, resource: dict[str, Any]) -> None:
        self.resource = resource
        self.token: list[tuple] = []
        self.string: list[tuple] = []
        self.reference: list[tuple] = []
        self.date: list[tuple] = []
        self.number: list[tuple] = []
        self.quantity: list[tuple] = []
        self.uri: list[tuple] = []
        self.composite: list[tuple] = []
        self.position: list[tuple] = []
        self.memo: Memo = {}


# Several parameters read the same element (Observation.code: code, combo-code and
# four composites; valueQuantity: four parameters), and reading a CodeableConcept or a
# Quantity (UCUM, ranges) is the costly part. Within one resource, what a reader gives
# for an object is kept by (reader, object); the entry holds the object, so its id
# cannot be reused by another object while the memo lives.
Memo = dict[tuple[int, int], tuple[Any, Any]]


def memoized(fn: Callable[..., Any], v: Any, memo: Memo, *args: Any) -> Any:
    """fn(v, *args), once per resource for each object v (plain values are not worth
    it); args must be the same on every call with this fn."""
    if type(v) is not dict:
        return fn(v, *args)
    key = (id(fn), id(v))
    hit = memo.get(key)
    if hit is not None:
        return hit[1]
    out = fn(v, *args)
    memo[key] = (v, out)
    return out


# -- cached primitives ----------------------------------------------------------------


def normalized(value: str) -> str:
    """normalize_string, with a fast path for ASCII text (same result)."""
    if value.isascii():
        return " ".join(value.lower().split())
    return normalize_string(value)


def _text(value: Any) -> str | None:
    if type(value) is not str:
        return None
    return normalized(value) or None


@lru_cache(maxsize=16384)
def cached_date_range(value: str) -> tuple[datetime, datetime] | None:
    try:
        return date_range(value)
    except DateFormatError:
        return None


def number_range(value: Any) -> tuple[Decimal, Decimal, Decimal] | None:
    if type(value) is bool or not isinstance(value, int | Decimal):
        return None
    try:
        return _number_range(value)
    except ValueError:
        return None


# -- token: (system, code, text) -----------------------------------------------------


def _coding(v: Any) -> list[tuple]:
    if type(v) is not dict:
        return []
    code, text = v.get("code"), _text(v.get("display"))
    if code is None and text is None:
        return []
    return [(v.get("system"), code, text)]


def _codeable_concept(v: Any) -> list[tuple]:
    """Each coding, with the concept's text (else the coding's display) as its text;
    a display that differs from the concept's text gets a text-only row of its own,
    and a concept without codings gives one text-only row."""
    if type(v) is not dict:
        return []
    text = _text(v.get("text"))
    out = []
    for coding in v.get("coding") or ():
        if type(coding) is not dict:
            continue
        code, display = coding.get("code"), _text(coding.get("display"))
        if code is not None or display is not None:
            out.append((coding.get("system"), code, text or display))
        if display is not None and text is not None and display != text:
            out.append((None, None, display))
    if not out and text is not None:
        out.append((None, None, text))
    return out


def _identifier(v: Any) -> list[tuple]:
    if type(v) is not dict or v.get("value") is None:
        return []
    kind = v.get("type")
    return [(v.get("system"), v["value"], _text(kind.get("text")) if type(kind) is dict else None)]


def _of_type_rows(v: Any) -> list[tuple]:
    """`identifier:of-type` rows: (type system, "type code|value", None) per type coding."""
    if type(v) is not dict or v.get("value") is None or type(v.get("type")) is not dict:
        return []
    return [
        (c.get("system"), f"{c['code']}|{v['value']}", None)
        for c in v["type"].get("coding") or ()
        if type(c) is dict and c.get("code") is not None
    ]


def _contact_point(v: Any) -> list[tuple]:
    """R4: a ContactPoint's token is its value (the system is matched by expressions
    such as `telecom.where(system='phone')`)."""
    if type(v) is not dict or v.get("value") is None:
        return []
    return [(None, v["value"], None)]


def _token_string(v: Any) -> list[tuple]:
    return [(None, v, None)] if type(v) is str else []


def _token_boolean(v: Any) -> list[tuple]:
    return [(None, "true" if v else "false", None)] if type(v) is bool else []


def _token_number(v: Any) -> list[tuple]:
    return [(None, str(v), None)] if number_range(v) is not None else []


def bound_code_reader(codes: Mapping[str, str]) -> Callable[[Any], list[tuple]]:
    """A `code` with a required binding: the system is the bound code system's."""

    def read(v: Any) -> list[tuple]:
        return [(codes.get(v), v, None)] if type(v) is str else []

    return read


TOKEN: dict[str, Callable[[Any], list[tuple]]] = {
    "Coding": _coding,
    "CodeableConcept": _codeable_concept,
    "Identifier": _identifier,
    "ContactPoint": _contact_point,
    "boolean": _token_boolean,
    **{name: _token_string for name in STRING_TYPES},
    **{name: _token_number for name in NUMBER_TYPES},
}

# -- string: (normalised, exact) -----------------------------------------------------


def _string_pair(value: Any) -> tuple[str, str] | None:
    if type(value) is not str or not value:
        return None
    norm = normalized(value)
    return (norm[:STRING_LIMIT], value) if len(norm) > STRING_LIMIT else (norm, value)


def _string(v: Any) -> list[tuple]:
    pair = _string_pair(v)
    return [pair] if pair else []


def _parts(v: Any, single: tuple[str, ...], repeated: tuple[str, ...]) -> list[tuple]:
    if type(v) is not dict:
        return []
    out = []
    for key in repeated:
        for item in v.get(key) or ():
            pair = _string_pair(item)
            if pair:
                out.append(pair)
    for key in single:
        pair = _string_pair(v.get(key))
        if pair:
            out.append(pair)
    return out


def _human_name(v: Any) -> list[tuple]:
    return _parts(v, ("family", "text"), ("given", "prefix", "suffix"))


def _address(v: Any) -> list[tuple]:
    return _parts(v, ("city", "district", "state", "postalCode", "country", "text"), ("line",))


STRING: dict[str, Callable[[Any], list[tuple]]] = {
    "HumanName": _human_name,
    "Address": _address,
    **{name: _string for name in STRING_TYPES},
}

# -- reference: (type, id, version, url) ---------------------------------------------


def _reference(v: Any) -> list[tuple]:
    """A Reference; one with only an identifier (a logical reference) or only a
    display gives no row."""
    if type(v) is not dict:
        return []
    text = v.get("reference")
    if type(text) is not str:
        return []
    target = parse_reference(text)
    kind = target.type
    if kind is None and not text.startswith("#"):
        declared = v.get("type")
        if type(declared) is str:
            kind = declared.rpartition("/")[2]
    url = target.url if target.url is None or len(target.url) <= KEY_LIMIT else None
    if kind is None and url is None:
        return []
    return [(kind, target.id, target.version, url)]


def _canonical(v: Any) -> list[tuple]:
    """A uri or string naming a resource (`Patient/1`, `http://x/fhir/Patient/1`)."""
    if type(v) is not str or not v:
        return []
    target = parse_canonical(v)
    url = target.url if target.url is None or len(target.url) <= KEY_LIMIT else None
    if target.type is None and url is None:
        return []
    return [(target.type, target.id, target.version, url)]


def _canonical_url(v: Any) -> list[tuple]:
    """A canonical element (`questionnaire`, `meta.profile`): its URL and version only.
    A canonical names an artefact by its `url`, never a resource by type and id, so
    it is not a local reference even when it ends in `Type/id` (R4 references.html#canonical)."""
    if type(v) is not str or not v:
        return []
    url, bar, version = v.partition("|")
    if not url or len(url) > KEY_LIMIT:
        return []
    return [(None, None, version if bar else None, url)]


def _resource(v: Any) -> list[tuple]:
    """A resource itself (`Bundle.entry[0].resource`): its type and id."""
    if type(v) is not dict or type(v.get("resourceType")) is not str:
        return []
    return [(v["resourceType"], v.get("id"), None, None)]


REFERENCE: dict[str, Callable[[Any], list[tuple]]] = {
    "Reference": _reference,
    "Resource": _resource,
    **{name: _canonical for name in URI_TYPES},
    "canonical": _canonical_url,
    "string": _canonical,
}

# -- date: (low, high) ---------------------------------------------------------------


def _date(v: Any) -> list[tuple]:
    if type(v) is not str:
        return []
    found = cached_date_range(v)
    return [found] if found else []


def _period(v: Any) -> list[tuple]:
    """A Period covers [start, end]; a missing start or end is open (MIN/MAX_INSTANT)."""
    if type(v) is not dict:
        return []
    start, end = v.get("start"), v.get("end")
    low = cached_date_range(start) if type(start) is str else None
    high = cached_date_range(end) if type(end) is str else None
    if low is None and high is None:
        return []
    return [(low[0] if low else MIN_INSTANT, high[1] if high else MAX_INSTANT)]


def _timing(v: Any) -> list[tuple]:
    if type(v) is not dict:
        return []
    out = []
    for event in v.get("event") or ():
        out.extend(_date(event))
    repeat = v.get("repeat")
    if type(repeat) is dict and "boundsPeriod" in repeat:
        out.extend(_period(repeat["boundsPeriod"]))
    return out


DATE: dict[str, Callable[[Any], list[tuple]]] = {
    "Period": _period,
    "Timing": _timing,
    **{name: _date for name in DATE_TYPES},
}

# -- number: (value, low, high) ------------------------------------------------------


def _number(v: Any) -> list[tuple]:
    found = number_range(v)
    return [found] if found else []


def _number_span(v: Any) -> list[tuple]:
    """A Range for a number parameter (RiskAssessment.prediction.probability): one row
    from low to high, each widened by its precision, a missing end infinite."""
    if type(v) is not dict:
        return []
    low_q, high_q = v.get("low"), v.get("high")
    low = number_range(low_q.get("value")) if type(low_q) is dict else None
    high = number_range(high_q.get("value")) if type(high_q) is dict else None
    if low is None and high is None:
        return []
    return [((low or high)[0], low[1] if low else _NEG_INF, high[2] if high else _INF)]  # type: ignore[index]


NUMBER: dict[str, Callable[[Any], list[tuple]]] = {
    "Range": _number_span,
    **{name: _number for name in NUMBER_TYPES},
}

# -- position: (latitude, longitude) of Location.position, for `near` -----------------


def position(v: Any) -> tuple[float, float] | None:
    """(latitude, longitude) of a Location.position, or None when it has no usable pair."""
    if type(v) is not dict:
        return None
    lat, lon = v.get("latitude"), v.get("longitude")
    if not isinstance(lat, int | float | Decimal) or not isinstance(lon, int | float | Decimal):
        return None
    if isinstance(lat, bool) or isinstance(lon, bool):
        return None
    try:
        lat_f, lon_f = float(lat), float(lon)
    except (OverflowError, ValueError):
        return None
    if not (-90.0 <= lat_f <= 90.0 and -180.0 <= lon_f <= 180.0):
        return None
    return lat_f, lon_f


# -- quantity: (value, low, high, system, code, unit, canon_value, canon_code) --------


def _quantity(v: Any) -> list[tuple]:
    if type(v) is not dict:
        return []
    found = number_range(v.get("value"))
    if found is None:
        return []
    value, low, high = found
    system, code = v.get("system"), v.get("code")
    canon = canonical(value, code) if system == UCUM else None
    if canon is None:
        return [(value, low, high, system, code, v.get("unit"), None, None)]
    return [(value, low, high, system, code, v.get("unit"), canon[0], canon[1])]


def _money(v: Any) -> list[tuple]:
    if type(v) is not dict:
        return []
    found = number_range(v.get("value"))
    if found is None:
        return []
    currency = v.get("currency")
    return [(*found, ISO4217 if currency else None, currency, currency, None, None)]


def _range(v: Any) -> list[tuple]:
    """A Range is one row spanning [low, high] (each widened by its precision; a
    missing end is infinite). Its value and units are those of low, else of high;
    canon_value is the canonical form of that value."""
    if type(v) is not dict:
        return []
    low_q, high_q = v.get("low"), v.get("high")
    low = _quantity(low_q)
    high = _quantity(high_q)
    if not low and not high:
        return []
    first = (low or high)[0]
    return [
        (
            first[0],
            low[0][1] if low else _NEG_INF,
            high[0][2] if high else _INF,
            *first[3:],
        )
    ]


QUANTITY: dict[str, Callable[[Any], list[tuple]]] = {
    "Money": _money,
    "Range": _range,
    **{name: _quantity for name in QUANTITY_TYPES},
}

# -- uri: (uri,) ---------------------------------------------------------------------


def _uri(v: Any) -> list[tuple]:
    return [(v,)] if type(v) is str and v and len(v) <= KEY_LIMIT else []


URI: dict[str, Callable[[Any], list[tuple]]] = {name: _uri for name in URI_TYPES | {"string"}}

READERS: dict[str, dict[str, Callable[[Any], list[tuple]]]] = {
    "token": TOKEN,
    "string": STRING,
    "reference": REFERENCE,
    "date": DATE,
    "number": NUMBER,
    "quantity": QUANTITY,
    "uri": URI,
}


def _token_key_ok(row: tuple) -> bool:
    code, system = row[1], row[0]
    return code is None or len(code) + len(system or "") <= KEY_LIMIT


# -- shape inference (values from the FHIRPath engine) --------------------------------

_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
_NAME_KEYS = ("family", "given", "prefix", "suffix")
_ADDRESS_KEYS = ("line", "city", "district", "state", "postalCode", "country")


# What a string from the engine is read as, per search type (it carries no FHIR type).
_STRING_AS = {"date": "dateTime", "reference": "canonical", "uri": "uri"}


def infer_type(v: Any, search_type: str | None = None) -> str | None:
    """The FHIR data type a JSON value most likely has (for untyped engine results);
    search_type settles ambiguous shapes (`{"text": …}` is a HumanName for string
    parameters, a CodeableConcept for tokens)."""
    kind = type(v)
    if kind is str:
        return _STRING_AS.get(search_type or "", "string")
    if kind is bool:
        return "boolean"
    if kind is int:
        return "integer"
    if isinstance(v, Decimal | float):
        return "decimal"
    if kind is not dict:
        return None
    if "resourceType" in v:
        return "Resource"
    if search_type == "string":
        return "Address" if any(k in v for k in _ADDRESS_KEYS) else "HumanName"
    if "coding" in v:
        return "CodeableConcept"
    if "reference" in v or type(v.get("identifier")) is dict:
        return "Reference"
    if number_range(v.get("value")) is not None:
        return "Money" if "currency" in v else "Quantity"
    if "low" in v or "high" in v:
        return "Range"
    if "start" in v or "end" in v:
        return "Period"
    if "event" in v or "repeat" in v:
        return "Timing"
    if any(k in v for k in _NAME_KEYS):
        return "HumanName"
    if any(k in v for k in _ADDRESS_KEYS):
        return "Address"
    if "value" in v:
        if v.get("system") in _CONTACT_SYSTEMS or "rank" in v:
            return "ContactPoint"
        return "Identifier"
    if "code" in v or "display" in v:
        return "Coding"
    if "text" in v and len(v) == 1:
        return "CodeableConcept"
    return None


# -- converters ----------------------------------------------------------------------

Converter = Callable[[Any, Sink], None]


def reader_for(
    search_type: str, type_name: str, codes: Mapping[str, str] | None = None
) -> Callable[[Any], list[tuple]] | None:
    """The reader of values of FHIR type type_name for a parameter of search_type, or
    None when that type gives no values of that kind (e.g. an Age for a date)."""
    if search_type == "token" and type_name == "code" and codes:
        return bound_code_reader(codes)
    table = READERS.get(search_type)
    return table.get(type_name) if table is not None else None


def row_converter(
    search_type: str, code: str, type_name: str | None, codes: Mapping[str, str] | None = None
) -> Converter | None:
    """A function appending the rows of one value to a Sink, or None if values of
    type_name give no rows; type_name None infers each value's type from its shape."""
    if type_name is None:
        return _inferring_converter(search_type, code)
    read = reader_for(search_type, type_name, codes)
    if read is None:
        return None
    if search_type == "token" and type_name == "Identifier":
        of_type = f"{code}:of-type"

        def identifier(v: Any, sink: Sink) -> None:
            for row in memoized(read, v, sink.memo):
                if _token_key_ok(row):
                    sink.token.append((code, *row))
            sink.token.extend((of_type, *row) for row in _of_type_rows(v) if _token_key_ok(row))

        return identifier
    if search_type == "token":

        def token(v: Any, sink: Sink) -> None:
            for row in memoized(read, v, sink.memo):
                if _token_key_ok(row):
                    sink.token.append((code, *row))

        return token
    if search_type == "reference" and type_name == "Reference":
        by_identifier = f"{code}:identifier"

        def reference(v: Any, sink: Sink) -> None:
            rows = memoized(read, v, sink.memo)
            if rows:
                sink.reference.extend([(code, *row) for row in rows])
            ident = v.get("identifier") if type(v) is dict else None
            if type(ident) is dict:
                sink.token.extend((by_identifier, *row) for row in _identifier(ident) if _token_key_ok(row))

        return reference
    attr = search_type

    def convert(v: Any, sink: Sink) -> None:
        rows = memoized(read, v, sink.memo)
        if rows:
            getattr(sink, attr).extend([(code, *row) for row in rows])

    return convert


def _inferring_converter(search_type: str, code: str) -> Converter:
    cache: dict[str | None, Converter | None] = {}

    def convert(v: Any, sink: Sink) -> None:
        type_name = infer_type(v, search_type)
        if type_name not in cache:
            cache[type_name] = row_converter(search_type, code, type_name) if type_name is not None else None
        found = cache[type_name]
        if found is not None:
            found(v, sink)

    return convert


# -- composite components: JSON-ready dicts -------------------------------------------


def _num(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _component_token(row: tuple) -> dict | None:
    return {"system": row[0], "code": row[1]} if row[1] is not None else None


def _component_string(row: tuple) -> dict:
    return {"value": row[0]}


def _component_reference(row: tuple) -> dict:
    if row[0] is None and row[1] is None:
        return {"url": row[3]}
    return {"type": row[0], "id": row[1]}


def _component_date(row: tuple) -> dict:
    return {"low": row[0].isoformat(), "high": row[1].isoformat()}


def _component_number(row: tuple) -> dict:
    return {"value": _num(row[0]), "low": _num(row[1]), "high": _num(row[2])}


def _component_quantity(row: tuple) -> dict:
    return {
        "value": _num(row[0]),
        "low": _num(row[1]),
        "high": _num(row[2]),
        "system": row[3],
        "code": row[4],
        "canon_value": _num(row[6]),
        "canon_code": row[7],
    }


def _component_uri(row: tuple) -> dict:
    return {"value": row[0]}


_COMPONENT_SHAPES: dict[str, Callable[[tuple], dict | None]] = {
    "token": _component_token,
    "string": _component_string,
    "reference": _component_reference,
    "date": _component_date,
    "number": _component_number,
    "quantity": _component_quantity,
    "uri": _component_uri,
}

ComponentConverter = Callable[[Any, Memo], list[dict]]
# One converter per (search type, FHIR type, bound codes), shared by every composite
# parameter, so that their memo entries are shared too (the codes are kept alive here).
_component_converters: dict[tuple[str, str | None, int], tuple[object, ComponentConverter | None]] = {}


def component_converter(
    search_type: str, type_name: str | None, codes: Mapping[str, str] | None = None
) -> ComponentConverter | None:
    """A function giving the composite-component dicts of one value (see module doc of
    `compile.py` for the shapes), or None if values of type_name give none."""
    key = (search_type, type_name, id(codes))
    found = _component_converters.get(key)
    if found is None:
        found = _component_converters[key] = (codes, _component_converter(search_type, type_name, codes))
    return found[1]


def _component_converter(
    search_type: str, type_name: str | None, codes: Mapping[str, str] | None
) -> ComponentConverter | None:
    shape = _COMPONENT_SHAPES.get(search_type)
    if shape is None:
        return None
    if type_name is None:

        def inferred(v: Any, memo: Memo) -> list[dict]:
            kind = infer_type(v, search_type)
            read = reader_for(search_type, kind, None) if kind else None
            return [d for d in map(shape, read(v)) if d is not None] if read else []

        return inferred
    read = reader_for(search_type, type_name, codes)
    if read is None:
        return None

    def convert(v: Any, memo: Memo) -> list[dict]:
        return [d for d in map(shape, memoized(read, v, memo)) if d is not None]

    return convert
