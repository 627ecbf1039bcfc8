"""The index rows extracted from one resource: the contract between extraction
(search/extract) and the store's write statement. One list per index table; each
tuple is a row without its (resource_type, resource_id) owner columns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

TokenRow = tuple[str, str | None, str | None, str | None]  # param, system, code, text
StringRow = tuple[str, str, str]  # param, normalised value, exact value
# param, target_type, target_id, target_version, url (absolute/canonical/logical text)
ReferenceRow = tuple[str, str | None, str | None, str | None, str | None]
DateRow = tuple[str, datetime, datetime]  # param, low, high (inclusive)
NumberRow = tuple[str, Decimal, Decimal, Decimal]  # param, value, low, high (exclusive)
# param, value, low, high, system, code, unit, canonical value, canonical code
QuantityRow = tuple[str, Decimal, Decimal, Decimal, str | None, str | None, str | None, Decimal | None, str | None]
UriRow = tuple[str, str]  # param, uri
CompositeRow = tuple[str, str]  # param, JSON array text of the components
PositionRow = tuple[str, float, float]  # param, latitude, longitude (WGS84 degrees)


# search_contained: the rows of contained resources, one wide row per index row (the
# typed tables' columns side by side, `kind` naming the table), owned by the container.
CONTAINED_COLUMNS: list[tuple[str, str]] = [
    ("contained_type", "text"),
    ("contained_id", "text"),
    ("kind", "text"),
    ("param", "text"),
    ("system", "text"),
    ("code", "text"),
    ("text", "text"),
    ("value_text", "text"),
    ("exact", "text"),
    ("target_type", "text"),
    ("target_id", "text"),
    ("target_version", "text"),
    ("url", "text"),
    ("low_ts", "timestamptz"),
    ("high_ts", "timestamptz"),
    ("value_num", "numeric"),
    ("low_num", "numeric"),
    ("high_num", "numeric"),
    ("unit", "text"),
    ("canon_value", "numeric"),
    ("canon_code", "text"),
    ("uri", "text"),
    ("components", "jsonb"),
    ("latitude", "float8"),
    ("longitude", "float8"),
]
_CONTAINED_INDEX = {name: i for i, (name, _) in enumerate(CONTAINED_COLUMNS)}
# the wide columns each typed row's fields (after param) go to
CONTAINED_FIELDS: dict[str, tuple[str, ...]] = {
    "token": ("system", "code", "text"),
    "string": ("value_text", "exact"),
    "reference": ("target_type", "target_id", "target_version", "url"),
    "date": ("low_ts", "high_ts"),
    "number": ("value_num", "low_num", "high_num"),
    "quantity": ("value_num", "low_num", "high_num", "system", "code", "unit", "canon_value", "canon_code"),
    "uri": ("uri",),
    "composite": ("components",),
    "position": ("latitude", "longitude"),
}
ContainedRow = tuple


def contained_row(contained_type: str, contained_id: str, kind: str, row: tuple) -> ContainedRow:
    """The search_contained row for one typed index row (param first) of a contained resource."""
    wide: list[object] = [None] * len(CONTAINED_COLUMNS)
    wide[0], wide[1], wide[2] = contained_type, contained_id, kind
    if row:
        wide[3] = row[0]
        for name, value in zip(CONTAINED_FIELDS[kind], row[1:], strict=True):
            wide[_CONTAINED_INDEX[name]] = value
    return tuple(wide)


@dataclass(slots=True)
class IndexRows:
    token: list[TokenRow] = field(default_factory=list)
    string: list[StringRow] = field(default_factory=list)
    reference: list[ReferenceRow] = field(default_factory=list)
    date: list[DateRow] = field(default_factory=list)
    number: list[NumberRow] = field(default_factory=list)
    quantity: list[QuantityRow] = field(default_factory=list)
    uri: list[UriRow] = field(default_factory=list)
    composite: list[CompositeRow] = field(default_factory=list)
    position: list[PositionRow] = field(default_factory=list)  # special `near` (Location.position)
    contained: list[ContainedRow] = field(default_factory=list)  # rows of contained resources
    # a Consent's provisions (search/extract/consent.py): patient, node, depth, decision, conditions
    consent: list[tuple[str, int, int, str, str]] = field(default_factory=list)
    narrative: str | None = None  # text of Resource.text.div, markup removed (_text)
    content: str | None = None  # every string value in the resource (_content)
