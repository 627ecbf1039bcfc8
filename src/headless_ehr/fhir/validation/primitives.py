"""Checks for the R4 primitive types, one compiled function per type.

The lexical rules come from the regex extensions in the profiles-types
StructureDefinitions, so the spec stays the source of truth; what a regex cannot
say (JSON value kind, 32-bit integer range, real calendar dates, 1 MB strings) is
added here. Every check returns an error message, or None when the value is valid.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..definitions import Definitions

Check = Callable[[Any], str | None]

REGEX_EXTENSION = "http://hl7.org/fhir/StructureDefinition/regex"
FHIR_TYPE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
MAX_STRING_LENGTH = 1024 * 1024  # R4: strings SHALL NOT exceed 1 MB

# The spec's base64Binary regex, `(\s*([0-9a-zA-Z\+/=]){4}\s*)+`, backtracks
# exponentially on long invalid input with line breaks; this is the same language
# written so that every character has exactly one way to match.
_BASE64 = r"\s*(?:[0-9a-zA-Z+/=]{4}\s*)+"

_ANY_TEXT = r"[ \r\n\t\S]+"  # the string and markdown regex
_STRING_TYPES = frozenset(
    {
        "string",
        "markdown",
        "code",
        "id",
        "uri",
        "url",
        "canonical",
        "oid",
        "uuid",
        "base64Binary",
        "date",
        "dateTime",
        "instant",
        "time",
        "xhtml",
    }
)
_DATED_TYPES = frozenset({"date", "dateTime", "instant"})
_NON_BLANK_TYPES = frozenset({"string", "markdown"})


@dataclass(frozen=True, slots=True)
class PrimitiveType:
    """One FHIR primitive type: its name and the function that checks a JSON value."""

    name: str
    check: Check

    def accepts_kind(self, value: Any) -> bool:
        """Whether `value` is the JSON kind (string, number, boolean) this type uses."""
        if self.name == "boolean":
            return type(value) is bool
        if self.name in ("integer", "positiveInt", "unsignedInt", "decimal"):
            return type(value) is not bool and isinstance(value, (int, Decimal, float))
        return type(value) is str


def spec_regexes(defs: Definitions) -> dict[str, str]:
    """The regex each primitive type's `value` element declares, keyed by type name."""
    out: dict[str, str] = {}
    for name, sd in defs.structure_definitions.items():
        if sd.get("kind") != "primitive-type":
            continue
        for element in sd["snapshot"]["element"]:
            if element["path"] != f"{name}.value":
                continue
            for type_ in element.get("type", []):
                for ext in type_.get("extension", []):
                    if ext["url"] == REGEX_EXTENSION:
                        out[name] = ext["valueString"]
    return out


def primitive_types(defs: Definitions) -> dict[str, PrimitiveType]:
    """Compile a check for every primitive type in the definitions."""
    regexes = spec_regexes(defs)
    if "base64Binary" in regexes:
        regexes["base64Binary"] = _BASE64
    out: dict[str, PrimitiveType] = {}
    for name, sd in defs.structure_definitions.items():
        if sd.get("kind") == "primitive-type":
            out[name] = PrimitiveType(name, _compile(name, regexes.get(name)))
    return out


def _compile(name: str, regex: str | None) -> Check:
    if name == "boolean":
        return _check_boolean
    if name in ("integer", "positiveInt", "unsignedInt"):
        low = {"integer": INT32_MIN, "positiveInt": 1, "unsignedInt": 0}[name]
        return _integer_check(name, low)
    if name == "decimal":
        return _check_decimal
    if name == "xhtml":
        return _check_xhtml
    if name in _STRING_TYPES:
        return _string_check(name, regex)
    raise ValueError(f"no JSON representation known for primitive type {name!r}")


def _check_boolean(value: Any) -> str | None:
    if type(value) is bool:
        return None
    return f"must be a JSON boolean (true or false), not {json_kind(value)}"


def _integer_check(name: str, low: int) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is not int:
            return f"{name} must be a JSON number without fraction, not {json_kind(value)}"
        if value < low or value > INT32_MAX:
            return f"{value} is outside the range of {name} ({low}..{INT32_MAX})"
        return None

    return check


def _check_decimal(value: Any) -> str | None:
    if type(value) is bool or not isinstance(value, (int, Decimal, float)):
        return f"decimal must be a JSON number, not {json_kind(value)}"
    if isinstance(value, Decimal):
        return decimal_problem(value)
    if type(value) is int and not -_INT_LIMIT < value < _INT_LIMIT:
        return f"decimal {str(value)[:20]}... is out of range (beyond 1e{DECIMAL_MAX_EXPONENT})"
    return None


# R4 decimal is xs:decimal or xs:double: its magnitude stays within the IEEE 754 double
# range, and a few hundred digits of precision are far more than any measurement has.
# Beyond that a number only costs (1e999999999 cannot be stored or compared) and is
# refused: in resources here, and in search values by the search parser.
DECIMAL_MAX_EXPONENT = 308
DECIMAL_MIN_EXPONENT = -324
DECIMAL_MAX_DIGITS = 1000
_INT_LIMIT = 10 ** (DECIMAL_MAX_EXPONENT + 1)


def decimal_problem(value: Decimal) -> str | None:
    """Why `value` cannot be a FHIR decimal here, or None."""
    if not value.is_finite():
        return "decimal must be a finite number"
    adjusted = value.adjusted()
    if value and not DECIMAL_MIN_EXPONENT <= adjusted <= DECIMAL_MAX_EXPONENT:
        limits = f"1e{DECIMAL_MIN_EXPONENT}..1e{DECIMAL_MAX_EXPONENT}"
        return f"decimal {_quote(str(value))} is out of range (its magnitude must be within {limits})"
    exponent = value.as_tuple().exponent
    if not -DECIMAL_MAX_DIGITS <= exponent <= DECIMAL_MAX_EXPONENT:  # type: ignore[operator]
        return f"decimal {_quote(str(value))} is out of range (at most {DECIMAL_MAX_DIGITS} digits after the point)"
    return None


def _check_xhtml(value: Any) -> str | None:
    if type(value) is not str:
        return f"xhtml must be a JSON string, not {json_kind(value)}"
    return None  # its content: narrative.check_narrative


def _string_check(name: str, regex: str | None) -> Check:
    # Java regex semantics: \s and \S are ASCII-only there, so they are here too.
    pattern = re.compile(regex, re.ASCII) if regex else None
    fullmatch: Callable[[str], object] | None = pattern.fullmatch if pattern else None
    if regex == _ANY_TEXT:
        # The commonest types (string, markdown, ...): `[ \r\n\t\S]+` only excludes
        # vertical tab and form feed, which the control-character check below rejects.
        fullmatch = None
    dated = name in _DATED_TYPES
    non_blank = name in _NON_BLANK_TYPES

    # Strings repeat (codes, systems, units, displays): a value that passed once passes
    # again without the regexes. Bounded, and dict operations are atomic under the GIL.
    valid: dict[str, None] = {}

    def check(value: Any) -> str | None:
        if type(value) is not str:
            return f"{name} must be a JSON string, not {json_kind(value)}"
        if value in valid:
            return None
        problem = full_check(value)
        if problem is None and len(value) <= _CACHED_LENGTH:
            if len(valid) >= _CACHED_VALUES:
                valid.clear()
            valid[value] = None
        return problem

    def full_check(value: str) -> str | None:
        if not value:
            return "empty strings are not allowed in FHIR JSON; omit the element"
        if len(value) > MAX_STRING_LENGTH:
            return f"{name} value is longer than the 1 MB maximum"
        if non_blank and value.isspace():
            return f"{name} must contain non-whitespace content"
        if _CONTROL.search(value):
            return f"{name} contains a control character (below U+0020 other than tab, CR, LF)"
        if fullmatch is not None and not fullmatch(value):
            return f"{_quote(value)} is not a valid {name}"
        if dated and len(value) >= 10 and not _real_day(value):
            return f"{_quote(value)} is not a real calendar date"
        return None

    return check


_CACHED_VALUES = 4096  # per primitive type: at most ~0.5 MB each
_CACHED_LENGTH = 128  # longer strings rarely repeat

# R4 datatypes: strings SHALL NOT contain characters below U+0020 except tab, CR and LF.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _real_day(value: str) -> bool:
    """The regexes allow 2023-02-31; the calendar does not."""
    day = int(value[8:10])
    if day <= 28:
        return True
    return day <= calendar.monthrange(int(value[0:4]), int(value[5:7]))[1]


def _quote(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def json_kind(value: Any) -> str:
    """The JSON kind of a parsed value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
