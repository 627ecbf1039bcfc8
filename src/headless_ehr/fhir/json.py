"""FHIR JSON in and out without losing decimal precision.

Standard JSON parsers turn `1.50` into the float `1.5`; FHIR requires the precision
to survive. Numbers with a fraction or exponent are parsed as `FhirDecimal`, which
keeps the exact text and is written back verbatim through an orjson Fragment.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson


class FhirDecimal(Decimal):
    """A decimal that remembers the exact text it was parsed from."""

    __slots__ = ("raw",)

    def __new__(cls, text: str) -> FhirDecimal:
        self = super().__new__(cls, text)
        self.raw = text
        return self


class JsonError(ValueError):
    """The body is not acceptable JSON (syntax, duplicate keys, NaN)."""


def _reject_constant(name: str) -> Any:
    raise JsonError(f"{name} is not a valid JSON number")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonError(f"duplicate property '{key}'")
            seen.add(key)
    return out


def loads(body: bytes | str, *, check_duplicates: bool = True) -> Any:
    """Parse FHIR JSON; raises JsonError with a readable message.

    Duplicate keys are an error; the check costs a Python call per JSON object, so
    trusted bulk paths (`ehr import`) may turn it off, keeping the last value.
    """
    try:
        return json.loads(
            body,
            parse_float=FhirDecimal,
            parse_constant=_reject_constant,
            object_pairs_hook=_pairs if check_duplicates else None,
        )
    except JsonError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise JsonError(f"invalid JSON: {exc}") from None


def _default(obj: Any) -> Any:
    if isinstance(obj, FhirDecimal):
        return orjson.Fragment(obj.raw)
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj))
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """Serialise to compact JSON bytes, decimals verbatim."""
    return orjson.dumps(obj, default=_default)
