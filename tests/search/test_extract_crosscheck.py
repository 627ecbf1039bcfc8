"""Extraction agrees with fhirpathpy on the R4 examples.

For every (resource, parameter) pair of the specification's examples where either
side finds something, the compiled extractor and a direct fhirpathpy evaluation of
the same expression must select the same element values, and the index rows must be
the same whether the values come typed from the compiler or typed by their shape from
fhirpathpy. Accepted differences, each checked rather than skipped:

- fhirpathpy finds nothing for `Resource.meta.tag` on some resources: it is given
  `<Type>.meta.tag` instead (the same elements by definition).
- R4 applies `as` to collections (`(Observation.component.value as Quantity)`), which
  is an error in FHIRPath; extraction treats it as a filter, so fhirpathpy is given
  `X.ofType(T)` when it reports the singleton error.
- A `code` with a required binding gets the bound code system on the compiled side;
  fhirpathpy's untyped value cannot know it. Accepted only where the compiler typed
  the value `code`.
- A `string` that looks like a date (`CarePlan.activity.detail.scheduledString`) is not
  a date on the compiled side; fhirpathpy's untyped string is read as one. Accepted
  only where the compiler typed the value `string`.
- Composite components (`value.as(DateTime)`) name the System type; fhirpathpy is
  given FHIR's `dateTime`.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from headless_ehr.fhir.json import loads
from headless_ehr.search.extract import extract, foreign_references
from headless_ehr.search.extract.compile import component_types, evaluate, select
from headless_ehr.search.extract.values import Sink, component_converter, row_converter
from headless_ehr.search.normalize import date_range
from headless_ehr.search.registry import COLUMN_PARAMS, SearchParam, search_params
from headless_ehr.search.registry import _split_union as _split

SHARED_FHIR = Path(__file__).resolve().parents[2].parent / "shared" / "fhir"
EXAMPLES = SHARED_FHIR / "examples-r4"
TABLES = ("token", "string", "reference", "date", "number", "quantity", "uri", "composite")
_AS = re.compile(r"\(([^()]+?) as (\w+)\)")

pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"R4 examples not found at {EXAMPLES}")


def _resources() -> list[tuple[str, dict[str, Any]]]:
    """Every example, and every resource in an example Bundle's entries."""
    out = []
    for path in sorted(EXAMPLES.glob("*.json")):
        resource = loads(path.read_bytes())
        out.append((path.name, resource))
        if resource["resourceType"] == "Bundle":
            for i, entry in enumerate(resource.get("entry") or ()):
                if isinstance(entry.get("resource"), dict):
                    out.append((f"{path.name}#entry{i}", entry["resource"]))
    return out


def _engine(expression: str, resource_type: str, resource: dict[str, Any], node: Any = None) -> list:
    """fhirpathpy's values for expression, with the accepted rewrites of the module doc."""
    expression = expression.replace("Resource.", resource_type + ".").replace("as(DateTime)", "as(dateTime)")
    try:
        return evaluate(expression, resource, node)
    except Exception as exc:
        if "singleton" not in str(exc):
            raise
        return evaluate(_AS.sub(r"\1.ofType(\2)", expression), resource, node)


def _key(value: Any) -> bytes:
    return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS)


class Pair:
    """One (resource, parameter) whose values both sides computed."""

    def __init__(self, name: str, resource: dict[str, Any], param: SearchParam) -> None:
        self.name, self.resource, self.param = name, resource, param
        self.compiled = select(param, resource)  # [(value, static type)]
        self.engine = _engine(param.expression or "", resource["resourceType"], resource)


@pytest.fixture(scope="module")
def pairs() -> list[Pair]:
    out = []
    for name, resource in _resources():
        for param in search_params(resource["resourceType"]).values():
            if param.code in COLUMN_PARAMS or not param.expression:
                continue
            if param.type in ("special", "composite"):
                continue
            pair = Pair(name, resource, param)
            if pair.compiled or pair.engine:
                out.append(pair)
    return out


def test_compiled_expressions_select_what_fhirpathpy_selects(pairs):
    differences = []
    for pair in pairs:
        assert pair.compiled is not None, f"{pair.param.url} is on the slow path"
        compiled = {_key(v) for v, _ in pair.compiled}
        engine = {_key(v) for v in pair.engine}
        if compiled != engine:
            differences.append((pair.name, pair.param.code, compiled ^ engine))
    print(f"\ncompared the selections of {len(pairs)} (resource, parameter) pairs")
    assert len(pairs) > 15000
    assert differences == []


def _rows(sink: Any) -> set[tuple]:
    return {row for table in TABLES for row in getattr(sink, table)}


def test_index_rows_agree_with_rows_from_fhirpathpy_values(pairs):
    accepted: Counter[str] = Counter()
    differences = []
    for pair in pairs:
        param, resource = pair.param, pair.resource
        compiled = _rows(extract(resource, [param]))
        sink = Sink(resource)
        convert = row_converter(param.type, param.code, None)
        assert convert is not None
        for value in pair.engine:
            convert(value, sink)
        sink.reference = foreign_references(sink.reference, None)  # as extract() does
        engine = _rows(sink)
        typed = {v: t for v, t in pair.compiled or () if isinstance(v, str)}
        for row in compiled - engine:
            untyped = (row[0], None, *row[2:])
            if param.type == "token" and typed.get(row[2]) == "code" and untyped in engine:
                engine.discard(untyped)  # the same row, with the bound system
                accepted["bound code system"] += 1
            else:
                differences.append((pair.name, param.code, "compiled only", row))
        string_dates = {(param.code, *date_range(v)) for v, t in typed.items() if t == "string" and _is_date(v)}
        for row in engine - compiled:
            if param.type == "date" and row in string_dates:
                accepted["date-like string"] += 1
            else:
                differences.append((pair.name, param.code, "engine only", row))
    print(f"\ncompared the rows of {len(pairs)} pairs; accepted: {dict(accepted)}")
    assert differences == []


def _is_date(value: str) -> bool:
    try:
        date_range(value)
    except ValueError:
        return False
    return True


def _composite_params() -> list[tuple[str, dict[str, Any], SearchParam]]:
    out = []
    for name, resource in _resources():
        for param in search_params(resource["resourceType"]).values():
            if param.type == "composite" and param.expression:
                out.append((name, resource, param))
    return out


def test_composite_rows_agree_with_fhirpathpy_per_element():
    """Each element the composite selects is addressed as `part[i]`, so fhirpathpy keeps
    the type context the components' choice elements (`value.as(Quantity)`) need."""
    compared = 0
    differences = []
    for name, resource, param in _composite_params():
        resource_type = resource["resourceType"]
        converters = [component_converter(t, None) for t in component_types(param)]
        engine: set[tuple] = set()
        for part in _split(param.expression or ""):
            count = len(_engine(part, resource_type, resource))
            for i in range(count):
                lists = []
                for component, convert in zip(param.components, converters, strict=True):
                    assert convert is not None
                    values = []
                    for piece in _split(component.expression):
                        path = piece if piece.startswith("%resource") else f"{part}[{i}].{piece}"
                        values += [d for v in _engine(path, resource_type, resource) for d in convert(v, {})]
                    lists.append(values)
                for combo in itertools.product(*lists):
                    engine.add((param.code, orjson.dumps(combo).decode()))
        compiled = set(extract(resource, [param]).composite)
        if not engine and not compiled:
            continue
        compared += 1
        if compiled != engine:
            differences.append((name, param.code, compiled ^ engine))
    print(f"\ncompared the composite rows of {compared} (resource, parameter) pairs")
    assert compared > 100
    assert differences == []
