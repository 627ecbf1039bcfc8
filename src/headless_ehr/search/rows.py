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
    narrative: str | None = None  # text of Resource.text.div, markup removed (_text)
    content: str | None = None  # every string value in the resource (_content)
