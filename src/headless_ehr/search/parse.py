"""Parse FHIR search parameters into clauses (http://hl7.org/fhir/R4/search.html).

Names carry modifiers and chains (`subject:Patient.name:exact`, `_has:Observation:
patient:code`); values carry OR lists (`a,b`) and prefixes (`ge2020`). Repeating a
parameter ANDs it. Everything is checked here so that the SQL compiler only ever
sees well-formed values, which it binds as parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal

from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError, Issue
from ..fhir.references import RESOURCE_ID, local_path
from ..fhir.validation.primitives import decimal_problem
from .registry import NEAR_URL, SearchParam, search_params

# Parameters that shape the result rather than filter it.
RESULT_PARAMETERS = frozenset(
    {
        "_count",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
        "_contained",
        "_containedType",
        "_format",
        "_pretty",
        "_cursor",
        "_type",
    }
)
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_PREFIXED_TYPES = frozenset({"number", "date", "quantity"})
_MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"missing", "not", "text", "of-type", "exact", "in", "not-in", "above", "below"},
    "reference": {"missing", "identifier", "above", "below"},  # plus :[type]; above/below: canonicals
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"missing", "above", "below", "exact"},
    "composite": {"missing"},
    "special": {"missing"},
}
MAX_CHAIN_DEPTH = 4
DEFAULT_MAX_CHAIN_BRANCHES = 32


class ChainBudget:
    """How many chain branches (one per target type per hop) a whole request may expand
    to: an untyped chain on a reference to any type multiplies at every hop."""

    def __init__(self, limit: int = DEFAULT_MAX_CHAIN_BRANCHES):
        self.limit = limit
        self.used = 0

    def spend(self, branches: int, name: str, code: str, rest: str) -> None:
        self.used += branches
        if self.used > self.limit:
            raise FhirError.of(
                400,
                "too-costly",
                f"'{name}' expands to more than {self.limit} chain branches in this search;"
                f" name the target type, e.g. '{code}:Patient.{rest}'",
            )


# reference modifiers whose values are matched as text, never as a local `Type/id`
_BY_TEXT = frozenset({"identifier", "above", "below", "missing"})


@dataclass
class Clause:
    """One parameter occurrence: its values are ORed; clauses are ANDed.

    For a chain (`subject:Patient.name=x`) `chain` holds, per target type, the clause
    to apply to the referenced resources; for `_has` `has` holds the clause on the
    referring type and `param` is that type's reference parameter.
    """

    name: str
    param: SearchParam | None  # None for _id, _lastUpdated, _text, _content, _list
    modifier: str | None = None
    values: list[str] = field(default_factory=list)
    chain: dict[str, Clause] | None = None  # target type -> clause on that type
    has_type: str | None = None
    has: Clause | None = None


def split_or(value: str) -> list[str]:
    """Split on unescaped commas, keeping escapes (`\\,` `\\|` `\\$`) for later steps."""
    return split_unescaped(value, ",")


def split_unescaped(value: str, sep: str) -> list[str]:
    """Split on unescaped `sep` (`,` `|` or `$`), keeping escapes."""
    parts, cur, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            cur.append(value[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def unescape(value: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", value)


def split_prefix(value: str) -> tuple[str, str]:
    """(prefix, rest) of a number/date/quantity value; `eq` when none is given."""
    if len(value) > 2 and value[:2] in PREFIXES and not value[2:3].isalpha():
        return value[:2], value[2:]
    return "eq", value


class Parser:
    """Turns (name, value) pairs for one resource type into clauses."""

    def __init__(
        self, resource_type: str, *, strict: bool, budget: ChainBudget | None = None, local_base: str | None = None
    ):
        self.resource_type = resource_type
        self.strict = strict
        self.budget = budget or ChainBudget()
        self.local_base = local_base  # absolute reference values under it are local
        self.issues: list[Issue] = []

    def unknown(self, message: str) -> None:
        if self.strict:
            raise FhirError.of(400, "not-supported", message)
        self.issues.append(Issue("warning", "not-supported", message))

    def parse(self, params: list[tuple[str, str]]) -> list[Clause]:
        clauses = []
        for name, value in params:
            if "\x00" in name or "\x00" in value:
                raise FhirError.of(400, "invalid", "search parameters may not contain NUL characters")
            base = name.split(":", 1)[0].split(".", 1)[0]
            if base in RESULT_PARAMETERS:
                continue
            clause = self.clause(self.resource_type, name, value, depth=0)
            if clause is not None:
                clauses.append(clause)
        return clauses

    def clause(self, rtype: str, name: str, value: str, depth: int) -> Clause | None:
        if depth > MAX_CHAIN_DEPTH:
            raise FhirError.of(400, "too-costly", f"'{name}': chains are limited to {MAX_CHAIN_DEPTH}")
        if name.startswith("_has:"):
            return self._has(rtype, name, value, depth)
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        modifier = modifier or None
        if code in ("_id", "_lastUpdated", "_text", "_content", "_list"):
            return self._column_clause(rtype, name, code, modifier, value, dot)
        param = search_params(rtype).get(code)
        if param is None:
            self.unknown(f"unknown search parameter '{code}' for {rtype}")
            return None
        if param.type == "special" and param.url != NEAR_URL:
            self.unknown(f"search parameter '{code}' ({param.type}) is not supported")
            return None
        if dot:
            return self._chain(rtype, name, param, modifier, rest, value, depth)
        type_modifier = param.type == "reference" and modifier in definitions().resource_types
        if modifier is not None and modifier not in _MODIFIERS[param.type] and not type_modifier:
            raise FhirError.of(400, "invalid", f"modifier ':{modifier}' is not valid on '{code}' ({param.type})")
        clause = Clause(name, param, modifier, split_or(value))
        if param.type == "reference" and modifier not in _BY_TEXT and self.local_base is not None:
            # `subject=<our base>/Patient/1` is `subject=Patient/1` (R4 search.html#reference),
            # or the same URL as text (a canonical on our base): both, ORed
            values = []
            for v in clause.values:
                relative = local_path(v, self.local_base)
                values += [relative, v] if relative else [v]
            clause.values = values
        self._check_values(clause)
        return clause

    def _column_clause(self, rtype: str, name: str, code: str, modifier: str | None, value: str, dot: str) -> Clause:
        if dot or (modifier and not (code == "_id" and modifier in ("missing", "not"))):
            raise FhirError.of(400, "invalid", f"'{name}' does not take modifiers or chains")
        clause = Clause(name, None, modifier, split_or(value))
        if code == "_lastUpdated":
            for v in clause.values:
                _check_date(name, split_prefix(v)[1])
        elif code in ("_id", "_list"):
            for v in clause.values:
                if code == "_list" and v.startswith("$"):
                    raise FhirError.of(400, "not-supported", f"functional list '{v}' is not supported; name a List id")
                if not RESOURCE_ID.fullmatch(unescape(v)):
                    raise FhirError.of(400, "invalid", f"invalid {code} value '{v}'")
        return clause

    def _chain(
        self,
        rtype: str,
        name: str,
        param: SearchParam,
        modifier: str | None,
        rest: str,
        value: str,
        depth: int,
    ) -> Clause | None:
        if param.type != "reference":
            raise FhirError.of(400, "invalid", f"'{param.code}' is not a reference; it cannot be chained")
        if modifier is not None:
            if modifier not in definitions().resource_types:
                raise FhirError.of(400, "invalid", f"unknown resource type ':{modifier}' in '{name}'")
            targets: tuple[str, ...] = (modifier,)
        else:
            targets = tuple(t for t in param.targets if t in definitions().resource_types) or ()
        next_code = rest.split(".", 1)[0].split(":", 1)[0]
        usable = tuple(t for t in targets if next_code in search_params(t) or next_code in ("_id", "_lastUpdated"))
        if not usable:
            self.unknown(f"'{name}': no target of '{param.code}' has a parameter '{next_code}'")
            return None
        self.budget.spend(len(usable), name, param.code, rest)
        chain: dict[str, Clause] = {}
        for target in usable:
            inner = self.clause(target, rest, value, depth + 1)
            if inner is None:
                return None
            chain[target] = inner
        return Clause(name, param, None, [], chain=chain)

    def _has(self, rtype: str, name: str, value: str, depth: int) -> Clause | None:
        parts = name.split(":", 3)
        if len(parts) < 4 or not parts[1] or not parts[2] or not parts[3]:
            raise FhirError.of(400, "invalid", f"'{name}' must be _has:Type:reference:parameter")
        _, other, ref_code, rest = parts
        if other not in definitions().resource_types:
            raise FhirError.of(400, "invalid", f"unknown resource type '{other}' in '{name}'")
        ref = search_params(other).get(ref_code)
        if ref is None or ref.type != "reference":
            raise FhirError.of(400, "invalid", f"'{ref_code}' is not a reference parameter of {other}")
        inner = self.clause(other, rest, value, depth + 1)
        if inner is None:
            return None
        return Clause(name, ref, None, [], has_type=other, has=inner)

    def _check_values(self, clause: Clause) -> None:
        param = clause.param
        assert param is not None
        if clause.modifier == "missing":
            if clause.values not in (["true"], ["false"]):
                raise FhirError.of(400, "invalid", f"'{clause.name}' takes true or false")
            return
        for raw in clause.values:
            if raw == "":
                raise FhirError.of(400, "invalid", f"'{clause.name}' has an empty value")
            if param.type == "date":
                _check_date(clause.name, split_prefix(raw)[1])
            elif param.type in ("number", "quantity"):
                _check_number(clause.name, raw)
            elif param.type == "composite":
                self._check_composite(clause, param, raw)
            elif param.type == "special":  # near
                parse_near(clause.name, raw)
            elif param.type == "token" and clause.modifier in ("in", "not-in", "above", "below"):
                _check_terminology(clause.name, clause.modifier, raw)
            elif param.type == "reference" and clause.modifier in ("above", "below") and "://" not in raw:
                raise FhirError.of(
                    400, "invalid", f"'{clause.name}': :{clause.modifier} applies to canonical URLs, not '{raw}'"
                )

    def _check_composite(self, clause: Clause, param: SearchParam, raw: str) -> None:
        from .extract.compile import component_types

        parts = split_unescaped(raw, "$")
        kinds = component_types(param)
        if len(parts) != len(kinds):
            raise FhirError.of(400, "invalid", f"'{clause.name}' needs {len(kinds)} values joined by $")
        for kind, part in zip(kinds, parts, strict=True):
            if not part:
                raise FhirError.of(400, "invalid", f"'{clause.name}': an empty component in '{raw}'")
            if kind == "date":
                _check_date(clause.name, split_prefix(part)[1])
            elif kind in ("number", "quantity"):
                _check_number(clause.name, part)


# `near` units (R4 Location-near: km when omitted); UCUM codes too.
NEAR_UNITS_KM = {"km": 1.0, "m": 0.001, "mi": 1.609344, "[mi_i]": 1.609344}
# `near` without a distance: R4 leaves "near" to the server; this one means 10 km.
DEFAULT_NEAR_KM = 10.0
MAX_NEAR_KM = 20_037.5  # half the Earth's circumference: beyond it everything is near


def parse_near(name: str, raw: str) -> tuple[float, float, float]:
    """(latitude, longitude, distance in km) of `near=lat|long|distance|units`."""
    parts = [unescape(p).strip() for p in split_unescaped(raw, "|")]
    if len(parts) < 2 or len(parts) > 4:
        raise FhirError.of(400, "invalid", f"'{name}' takes latitude|longitude|distance|units, got '{raw}'")
    numbers = []
    for label, text in zip(("latitude", "longitude", "distance"), parts, strict=False):
        if label == "distance" and text == "":
            continue
        if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", text, flags=re.ASCII):
            raise FhirError.of(400, "invalid", f"'{name}': {label} '{text}' is not a decimal number")
        numbers.append((label, float(text)))
    values = dict(numbers)
    lat, lon = values["latitude"], values["longitude"]
    if not -90.0 <= lat <= 90.0 or not -180.0 <= lon <= 180.0:
        raise FhirError.of(400, "invalid", f"'{name}': latitude must be within ±90 and longitude within ±180")
    unit = parts[3] if len(parts) == 4 and parts[3] else "km"
    if unit not in NEAR_UNITS_KM:
        raise FhirError.of(400, "invalid", f"'{name}': unknown distance unit '{unit}' (use km, m, mi or [mi_i])")
    distance = values.get("distance")
    km = DEFAULT_NEAR_KM if distance is None else distance * NEAR_UNITS_KM[unit]
    if km < 0:
        raise FhirError.of(400, "invalid", f"'{name}': the distance may not be negative")
    return lat, lon, min(km, MAX_NEAR_KM)


def _check_terminology(name: str, modifier: str, raw: str) -> None:
    """`:in`/`:not-in` name a value set we can expand; `:above`/`:below` a system|code in a
    code system whose hierarchy we have (resolved here once; the SQL reuses the cache)."""
    from .terminology import subsumed_codes, value_set_codes

    if modifier in ("in", "not-in"):
        value_set_codes(name, unescape(raw))
        return
    parts = split_unescaped(raw, "|")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise FhirError.of(400, "invalid", f"'{name}' takes system|code, got '{raw}'")
    subsumed_codes(name, unescape(parts[0]), unescape(parts[1]), upwards=modifier == "above")


_NUMBER = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)


def _check_number(name: str, raw: str) -> None:
    number = split_unescaped(split_prefix(raw)[1], "|")[0]
    if not _NUMBER.fullmatch(number):
        raise FhirError.of(400, "invalid", f"'{name}': '{raw[:100]}' is not a number")
    problem = decimal_problem(Decimal(number))  # the range resources are held to
    if problem is not None:
        raise FhirError.of(400, "invalid", f"'{name}': {problem}")


def _check_date(name: str, value: str) -> None:
    from .normalize import DateFormatError, date_range

    try:
        date_range(value.replace(" ", "+"))
    except DateFormatError as exc:
        raise FhirError.of(400, "invalid", f"'{name}': {exc}") from None
