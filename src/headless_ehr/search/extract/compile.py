"""Compile SearchParameter expressions into fast Python extractors, once per parameter.

The R4 expressions are mostly a small part of FHIRPath: dotted paths, choice
elements (`Observation.effective`), `as`/`as()`/`ofType()`, `where(resolve() is T)`,
`where(child = 'literal')`, `extension('url')`, `[n]`/`first()`, unions and
`%resource`. Those are parsed here and resolved against the R4 type model (the
validator's, compiled from the StructureDefinitions), so every step knows the JSON
keys it reads (`effectiveDateTime`, `effectivePeriod`, …) and every selected value
knows its FHIR type: conversion to index values is chosen at compile time.

Anything else is evaluated by fhirpathpy (the slow path), with a `resolve()` that
gives the referenced type, and its results are typed by their shape.

A compiled parameter is a list of `(key, fn)`: `fn(values, sink)` runs on the values
of the resource's top-level `key` (None: on `[resource]`), so extraction only runs
the parameters whose first element is present in the resource.

Composite rows are JSON arrays, one object per component in parameter order:
token {"system","code"}; quantity {"value","low","high","system","code",
"canon_value","canon_code"} (numbers as strings); date {"low","high"} (ISO 8601,
UTC); string {"value"} (normalised); number {"value","low","high"}; reference
{"type","id"} (or {"url"} when the reference has no type/id); uri {"value"}.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson

from ...fhir.definitions import definitions
from ...fhir.validation import validator
from ...fhir.validation.rules import COMPLEX, PRIMITIVE, RESOURCE, TypeModel
from ..registry import ABSTRACT_BASES, NEAR_URL, SearchParam, by_url
from .references import reference_type
from .values import Memo, Sink, component_converter, memoized, position, row_converter

log = logging.getLogger(__name__)

Fn = Callable[[list, Any], None]  # (values, sink-like) -> None
Compiled = list[tuple[str | None, Fn]]


class Unsupported(Exception):
    """The expression uses FHIRPath this compiler does not handle (slow path)."""


# -- the type model ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """The static type of the values at some point of an expression."""

    name: str  # FHIR type ("CodeableConcept", "dateTime", "Resource") or backbone path
    model: TypeModel | None = None  # children, for complex types and backbones
    codes: Mapping[str, str] | None = None  # code -> system of a required binding


def resource_shape(resource_type: str) -> Shape:
    model = validator().compiler.resource_model(resource_type)
    if model is None:
        raise KeyError(f"unknown resource type {resource_type}")
    return Shape(resource_type, model)


@cache
def _bound_codes(binding: Any) -> Mapping[str, str] | None:
    """code -> system for the codes of a required binding that have one system."""
    systems: dict[str, set[str]] = {}
    for system, code in binding.pairs:
        systems.setdefault(code, set()).add(system)
    out = {code: next(iter(s)) for code, s in systems.items() if len(s) == 1}
    return out or None


def _rule_shape(rule: Any) -> Shape | None:
    if rule.kind == PRIMITIVE:
        codes = _bound_codes(rule.binding) if rule.binding is not None else None
        return Shape(rule.type_code, None, codes)
    if rule.kind == COMPLEX:
        return Shape(rule.model.name, rule.model)
    if rule.kind == RESOURCE:
        return Shape("Resource")
    return None  # `_name` shadows, resourceType


def _children(shape: Shape, name: str) -> list[tuple[str, Shape]]:
    """The JSON keys and shapes of child `name` (every type of a choice element)."""
    model = shape.model
    if model is None:
        raise Unsupported(f"child '{name}' of {shape.name}")
    out = []
    if name in model.choices:
        for rule in model.properties.values():
            if rule.choice == name:
                child = _rule_shape(rule)
                if child is not None:
                    out.append((rule.key, child))
        return out
    rule = model.properties.get(name)
    if rule is not None:
        child = _rule_shape(rule)
        if child is not None:
            out.append((name, child))
    return out  # an element the model does not have selects nothing


# FHIRPath System types used as FHIR type names (`value.as(DateTime)` in R4).
_SYSTEM_TYPES = {
    "DateTime": "dateTime",
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "Time": "time",
}


@cache
def _ancestors(type_name: str) -> frozenset[str]:
    """type_name and the types it specialises (`canonical` → uri; `Age` → Quantity)."""
    sds = definitions().structure_definitions
    out, name = {type_name}, type_name
    while name in sds:
        base = sds[name].get("baseDefinition", "")
        name = base.rpartition("/")[2]
        if not name or name in out:
            break
        out.add(name)
    return frozenset(out)


def _matches(shape: Shape, type_name: str) -> bool:
    """FHIRPath `is`/`as`/`ofType`: the type or a subtype of it (R4 primitives
    `canonical` ⊂ `uri`, `code` ⊂ `string`, `Age` ⊂ `Quantity`, ...)."""
    name = type_name.removeprefix("FHIR.")
    name = _SYSTEM_TYPES.get(name, name)
    if shape.name == "Resource" and name != "Resource":
        raise Unsupported(f"type test on a resource of unknown type: {name}")
    return shape.name == name or name in _ancestors(shape.name)


# -- parsing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Child:
    name: str


@dataclass(frozen=True, slots=True)
class Index:
    n: int


@dataclass(frozen=True, slots=True)
class OfType:
    type: str


@dataclass(frozen=True, slots=True)
class ResolveIs:
    type: str


@dataclass(frozen=True, slots=True)
class Equals:
    path: Any  # node, relative to the filtered value
    literal: str | bool


@dataclass(frozen=True, slots=True)
class Where:
    condition: ResolveIs | Equals


@dataclass(frozen=True, slots=True)
class Path:
    base: Any  # None (the context), ResourceRoot, or a node in parentheses
    steps: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ResourceRoot:
    pass


@dataclass(frozen=True, slots=True)
class Union:
    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class As:
    node: Any
    type: str


@dataclass(frozen=True, slots=True)
class ExistsNotFalse:
    """`X.exists() and X != false` (Patient.deceased): one boolean."""

    path: Any


_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+)|(?P<id>%?[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>!=|[().\[\]|=,]))"
)
_EXISTS_NOT_FALSE = re.compile(r"^(?P<path>[A-Za-z][A-Za-z0-9.]*)\.exists\(\) and (?P=path) != false$")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise Unsupported(f"cannot read '{text[pos:]}'")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match[kind]))
        pos = match.end()
    return out


class _Parser:
    """Recursive descent over the FHIRPath subset; raises Unsupported on the rest."""

    def __init__(self, text: str, root_names: frozenset[str]) -> None:
        self.tokens = _tokens(text)
        self.pos = 0
        self.root_names = root_names

    def peek(self, value: str | None = None) -> bool:
        if self.pos >= len(self.tokens):
            return False
        return value is None or self.tokens[self.pos][1] == value

    def take(self, value: str | None = None) -> str:
        if not self.peek(value):
            raise Unsupported(f"expected {value or 'more'}")
        token = self.tokens[self.pos][1]
        self.pos += 1
        return token

    def ident(self) -> str:
        if self.pos >= len(self.tokens) or self.tokens[self.pos][0] != "id":
            raise Unsupported("expected a name")
        return self.take()

    def parse(self) -> Any:
        node = self.union()
        if self.pos != len(self.tokens):
            raise Unsupported(f"unexpected '{self.tokens[self.pos][1]}'")
        return node

    def union(self) -> Any:
        items = [self.term()]
        while self.peek("|"):
            self.take()
            items.append(self.term())
        return items[0] if len(items) == 1 else Union(tuple(items))

    def term(self) -> Any:
        node = self.postfix()
        if self.peek("as"):
            self.take()
            node = As(node, self.ident())
        return node

    def postfix(self) -> Any:
        if self.peek("("):
            self.take()
            base, steps = self.union(), []
            self.take(")")
        else:
            name = self.ident()
            if name == "%resource":
                base, steps = ResourceRoot(), []
            elif name in self.root_names:
                base, steps = None, []
            else:
                base, steps = None, [self.invocation(name)]
        while True:
            if self.peek("."):
                self.take()
                steps.extend(self.expand(self.invocation(self.ident())))
            elif self.peek("["):
                self.take()
                n = self.take()
                if not (n.isascii() and n.isdigit()):
                    raise Unsupported("index")
                self.take("]")
                steps.append(Index(int(n)))
            else:
                break
        if not steps:
            return base if base is not None else Path(None, ())
        return Path(base, tuple(steps))

    def expand(self, step: Any) -> list[Any]:
        if isinstance(step, tuple):  # extension('url')
            return list(step)
        return [step]

    def invocation(self, name: str) -> Any:
        if not self.peek("("):
            if name.startswith("%"):
                raise Unsupported(name)
            return Child(name)
        self.take("(")
        if name in ("as", "ofType"):
            step: Any = OfType(self.ident())
        elif name == "where":
            step = Where(self.condition())
        elif name == "first":
            step = Index(0)
        elif name == "extension":
            url = self.take()
            if not url.startswith("'"):
                raise Unsupported("extension()")
            step = (Child("extension"), Where(Equals(Path(None, (Child("url"),)), url[1:-1])))
        else:
            raise Unsupported(f"{name}()")
        self.take(")")
        return step

    def condition(self) -> ResolveIs | Equals:
        if self.peek("resolve"):
            self.take()
            self.take("(")
            self.take(")")
            self.take("is")
            return ResolveIs(self.ident())
        inner = _Parser.__new__(_Parser)
        inner.tokens, inner.pos, inner.root_names = self.tokens, self.pos, frozenset()
        path = inner.postfix()
        self.pos = inner.pos
        self.take("=")
        literal = self.take()
        if literal.startswith("'"):
            return Equals(path, literal[1:-1])
        if literal in ("true", "false"):
            return Equals(path, literal == "true")
        raise Unsupported(f"literal {literal}")


def parse(expression: str, root_names: frozenset[str]) -> Any:
    special = _EXISTS_NOT_FALSE.match(expression.strip())
    if special:
        return ExistsNotFalse(_Parser(special["path"], root_names).parse())
    return _Parser(expression, root_names).parse()


# -- compiling -----------------------------------------------------------------------

Cont = Callable[[Shape], Fn | None]


class _Collector:
    """A sink-like object that gathers the selected values (where(), components)."""

    __slots__ = ("memo", "resource", "values")

    def __init__(self, resource: dict[str, Any], memo: Memo | None = None) -> None:
        self.resource = resource
        self.values: list[Any] = []
        self.memo: Memo = {} if memo is None else memo


class _Compiler:
    def __init__(self, root: Shape) -> None:
        self.root = root

    def node(self, node: Any, shape: Shape, k: Cont, whole: bool) -> Fn | None:
        if isinstance(node, Path):
            if node.base is None:
                return self.steps(node.steps, 0, shape, k, whole)
            if isinstance(node.base, ResourceRoot):
                inner = self.steps(node.steps, 0, self.root, k, True)
                return None if inner is None else _from_resource(inner)
            steps = node.steps
            return self.node(node.base, shape, lambda s: self.steps(steps, 0, s, k, False), whole)
        if isinstance(node, ResourceRoot):
            inner = k(self.root)
            return None if inner is None else _from_resource(inner)
        if isinstance(node, Union):
            fns = [f for f in (self.node(i, shape, k, False) for i in node.items) if f]
            return _union(fns)
        if isinstance(node, As):
            wanted = node.type
            return self.node(node.node, shape, lambda s: k(s) if _matches(s, wanted) else None, whole)
        if isinstance(node, ExistsNotFalse):
            return self.exists_not_false(node, shape, k)
        raise Unsupported(type(node).__name__)

    def steps(self, steps: tuple[Any, ...], i: int, shape: Shape, k: Cont, whole: bool) -> Fn | None:
        if i == len(steps):
            return k(shape)
        step = steps[i]
        if isinstance(step, Child):
            children = _children(shape, step.name)
            pairs = []
            for key, child in children:
                nxt = self.steps(steps, i + 1, child, k, whole and len(children) == 1)
                if nxt is not None:
                    pairs.append((key, nxt))
            return _child(pairs) if pairs else None
        if isinstance(step, OfType):
            return self.steps(steps, i + 1, shape, k, whole) if _matches(shape, step.type) else None
        if isinstance(step, Index):
            if not whole:
                raise Unsupported("index after a choice or union")
            nxt = self.steps(steps, i + 1, shape, k, whole)
            return None if nxt is None else _index(step.n, nxt)
        if isinstance(step, Where):
            nxt = self.steps(steps, i + 1, shape, k, whole)
            if nxt is None:
                return None
            condition = step.condition
            if isinstance(condition, ResolveIs):
                if shape.name != "Reference":
                    raise Unsupported(f"resolve() on {shape.name}")
                return _resolve_is(condition.type, nxt)
            inner = self.node(condition.path, shape, _collect, True)
            if inner is None:
                return None  # the compared element never exists: nothing passes
            return _equals(inner, condition.literal, nxt)
        raise Unsupported(type(step).__name__)

    def exists_not_false(self, node: ExistsNotFalse, shape: Shape, k: Cont) -> Fn | None:
        inner = self.node(node.path, shape, _collect, True)
        out = k(Shape("boolean"))
        if out is None:
            return None

        def run(values: list, sink: Any) -> None:
            found: list = []
            if inner is not None:
                collector = _Collector(sink.resource, sink.memo)
                inner(values, collector)
                found = collector.values
            out([bool(found) and found != [False]], sink)

        return run


def _collect(shape: Shape) -> Fn:
    def run(values: list, sink: Any) -> None:
        sink.values.extend(values)

    return run


def _child_values(values: list, key: str) -> list:
    """The values of child `key` of every object in values, arrays flattened."""
    out: list = []
    for v in values:
        c = v.get(key) if type(v) is dict else None
        if c is not None:
            if type(c) is list:
                out.extend(c)
            else:
                out.append(c)
    return out


def _child(pairs: list[tuple[str, Fn]]) -> Fn:
    def run(values: list, sink: Any) -> None:
        for key, nxt in pairs:
            out = _child_values(values, key)
            if out:
                nxt(out, sink)

    run.pairs = pairs  # type: ignore[attr-defined]
    return run


def _union(fns: list[Fn]) -> Fn | None:
    if not fns:
        return None
    if len(fns) == 1:
        return fns[0]

    def run(values: list, sink: Any) -> None:
        for fn in fns:
            fn(values, sink)

    run.parts = fns  # type: ignore[attr-defined]
    return run


def _from_resource(inner: Fn) -> Fn:
    def run(values: list, sink: Any) -> None:
        inner([sink.resource], sink)

    return run


def _index(n: int, nxt: Fn) -> Fn:
    def run(values: list, sink: Any) -> None:
        if len(values) > n:
            nxt([values[n]], sink)

    return run


def _resolve_is(type_name: str, nxt: Fn) -> Fn:
    def run(values: list, sink: Any) -> None:
        kept = [v for v in values if reference_type(v, sink.resource) == type_name]
        if kept:
            nxt(kept, sink)

    return run


def _equals(inner: Fn, literal: str | bool, nxt: Fn) -> Fn:
    def run(values: list, sink: Any) -> None:
        kept = []
        for v in values:
            collector = _Collector(sink.resource, sink.memo)
            inner([v], collector)
            if any(x == literal and type(x) is type(literal) for x in collector.values):
                kept.append(v)
        if kept:
            nxt(kept, sink)

    return run


def _root_entries(fn: Fn) -> Compiled:
    """Split the compiled root into (top-level key, fn) entries; None: always run."""
    pairs = getattr(fn, "pairs", None)
    if pairs is not None:
        return list(pairs)
    parts = getattr(fn, "parts", None)
    if parts is not None:
        return [entry for part in parts for entry in _root_entries(part)]
    return [(None, fn)]


# -- leaves: values -> rows ----------------------------------------------------------


def _row_leaf(param: SearchParam, bound_systems: bool) -> Cont:
    def leaf(shape: Shape) -> Fn | None:
        codes = shape.codes if bound_systems else None
        convert = row_converter(param.type, param.code, shape.name, codes)
        if convert is None:
            return None

        def run(values: list, sink: Any) -> None:
            for v in values:
                convert(v, sink)

        return run

    return leaf


def _component_leaf(search_type: str) -> Cont:
    def leaf(shape: Shape) -> Fn | None:
        convert = component_converter(search_type, shape.name, shape.codes)
        if convert is None:
            return None

        def run(values: list, sink: Any) -> None:
            memo = sink.memo
            for v in values:
                sink.values.extend(memoized(convert, v, memo, memo))

        return run

    return leaf


def component_types(param: SearchParam) -> list[str]:
    """The search type of each component of a composite, in parameter order.

    A component's type is its definition's, except where R4 pairs an expression with
    the wrong definition: DocumentReference `relationship` lists `relatesto`
    (reference) with expression `code` and `relation` (token) with `target`. When a
    definition's own expression does not end in the component's expression but a
    sibling's does, the sibling's type is used (so `code` is a token, `target` a
    reference). The query side should read `a$b` values with these types.
    """
    urls = by_url()
    definitions = []
    for component in param.components:
        definition = urls.get(component.definition)
        if definition is None:
            raise Unsupported(f"component {component.definition} is not defined")
        definitions.append(definition)
    types = []
    for component, definition in zip(param.components, definitions, strict=True):
        chosen = definition
        if not _ends_with(definition, component.expression):
            for sibling in definitions:
                if _ends_with(sibling, component.expression):
                    chosen = sibling
                    break
        types.append(chosen["type"])
    return types


def _ends_with(definition: dict[str, Any], expression: str) -> bool:
    own = (definition.get("expression") or "").strip()
    return own == expression or own.endswith("." + expression) or "|" in own or "(" in own


def _composite_leaf(param: SearchParam, compiler: _Compiler) -> Cont:
    parsed = [
        (parse(component.expression, frozenset()), search_type)
        for component, search_type in zip(param.components, component_types(param), strict=True)
    ]
    code = param.code

    def leaf(shape: Shape) -> Fn | None:
        fns = []
        for node, search_type in parsed:
            fn = compiler.node(node, shape, _component_leaf(search_type), True)
            if fn is None:
                return None  # this element can never carry every component
            fns.append(fn)

        # Evaluated last component first: the first is usually a code every element
        # has, the later ones values that most elements lack, so misses end early.
        last_first = fns[::-1]

        def run(values: list, sink: Any) -> None:
            for element in values:
                lists = []
                for fn in last_first:
                    collector = _Collector(sink.resource, sink.memo)
                    fn([element], collector)
                    if not collector.values:
                        break
                    lists.append(collector.values)
                else:
                    lists.reverse()
                    for combo in itertools.product(*lists):
                        sink.composite.append((code, orjson.dumps(combo).decode()))

        return run

    return leaf


# -- the slow path -------------------------------------------------------------------

_current_resource: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "extract_resource", default=None
)


def _resolve(inputs: list) -> list:
    """FHIRPath resolve() for fhirpathpy: a node of the referenced type, enough for
    `resolve() is T` (ARCHITECTURE.md: a plain dict would make `is` false)."""
    from fhirpathpy.engine.nodes import ResourceNode

    resource = _current_resource.get()
    out = []
    for item in inputs:
        data = getattr(item, "data", item)
        kind = reference_type(data, resource)
        if kind is not None:
            out.append(ResourceNode.create_node({"resourceType": kind}, kind))
    return out


@cache
def fhirpath(expression: str) -> Callable[..., list]:
    """fhirpathpy's compiled form of an expression, with our resolve()."""
    import fhirpathpy
    from fhirpathpy.models import models

    return fhirpathpy.compile(
        expression,
        model=models["r4"],
        options={"userInvocationTable": {"resolve": {"fn": _resolve, "arity": {0: []}}}},
    )


def evaluate(expression: str, resource: dict[str, Any], node: Any = None) -> list:
    """fhirpathpy's result of expression on node (default: the resource)."""
    token = _current_resource.set(resource)
    try:
        return fhirpath(expression)(resource if node is None else node, {"resource": resource})
    finally:
        _current_resource.reset(token)


# -- the time budget of slow-path expressions -----------------------------------------
# A custom SearchParameter's expression runs on every write of its base type and on
# $reindex; one that explodes (nested descendants(), repeat()) must not hang either.
# fhirpathpy evaluates node by node through its `evaluators` table: each entry is
# wrapped once to check a deadline, set per evaluation (the compiled fast path is
# linear in the resource and needs none).

EXPRESSION_BUDGET_SECONDS = 0.1  # per parameter and resource; EHR_SEARCH_EXPRESSION_BUDGET_MS
_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("fhirpath_deadline", default=0.0)


class BudgetExceeded(Exception):
    """An expression ran past its time budget."""


def set_expression_budget(seconds: float) -> None:
    global EXPRESSION_BUDGET_SECONDS
    EXPRESSION_BUDGET_SECONDS = seconds


@cache
def _install_deadline() -> None:
    from fhirpathpy.engine.evaluators import evaluators

    def timed(evaluator: Callable[..., Any]) -> Callable[..., Any]:
        def run(ctx: Any, parent: Any, node: Any) -> Any:
            deadline = _deadline.get()
            if deadline and time.monotonic() > deadline:
                raise BudgetExceeded
            return evaluator(ctx, parent, node)

        return run

    for name, evaluator in list(evaluators.items()):
        evaluators[name] = timed(evaluator)


def evaluate_within_budget(expression: str, resource: dict[str, Any], node: Any = None) -> list:
    """evaluate(), raising BudgetExceeded once EXPRESSION_BUDGET_SECONDS have passed."""
    _install_deadline()
    # a nested evaluation (a composite's components) shares its caller's deadline
    token = _deadline.set(_deadline.get() or time.monotonic() + EXPRESSION_BUDGET_SECONDS)
    try:
        return evaluate(expression, resource, node)
    finally:
        _deadline.reset(token)


def _over_budget(param: SearchParam, resource: dict[str, Any]) -> None:
    log.warning(
        "search parameter %s skipped on %s/%s: its expression ran past %.0f ms",
        param.url,
        resource.get("resourceType"),
        resource.get("id"),
        EXPRESSION_BUDGET_SECONDS * 1000,
    )


def _slow(param: SearchParam) -> Fn:
    expression = param.expression
    assert expression is not None
    if param.type == "composite":
        return _slow_composite(param)
    convert = row_converter(param.type, param.code, None)
    assert convert is not None

    def run(values: list, sink: Any) -> None:
        try:
            found = evaluate_within_budget(expression, sink.resource)
        except BudgetExceeded:
            _over_budget(param, sink.resource)
            return
        except Exception:  # an expression the engine cannot run on this resource
            log.warning("cannot evaluate %s on %s", param.url, sink.resource.get("resourceType"))
            return
        for v in found:
            convert(v, sink)

    return run


def _slow_composite(param: SearchParam) -> Fn:
    components = []
    for component, search_type in zip(param.components, component_types(param), strict=True):
        convert = component_converter(search_type, None)
        if convert is None:
            raise Unsupported(f"component type {search_type}")
        components.append((component.expression, convert))
    expression, code = param.expression, param.code
    assert expression is not None

    def run(values: list, sink: Any) -> None:
        rows: list[tuple[str, str]] = []
        token = _deadline.set(time.monotonic() + EXPRESSION_BUDGET_SECONDS)  # one budget for all components
        try:
            elements = evaluate_within_budget(expression, sink.resource)
            for element in elements:
                lists = []
                for component_expression, convert in components:
                    found = [
                        d
                        for v in evaluate_within_budget(component_expression, sink.resource, element)
                        for d in convert(v, {})
                    ]
                    if not found:
                        break
                    lists.append(found)
                else:
                    rows.extend((code, orjson.dumps(combo).decode()) for combo in itertools.product(*lists))
        except BudgetExceeded:
            _over_budget(param, sink.resource)
            return
        except Exception:
            log.warning("cannot evaluate %s on %s", param.url, sink.resource.get("resourceType"))
        finally:
            _deadline.reset(token)
        sink.composite.extend(rows)

    return run


# -- entry point ---------------------------------------------------------------------

_cache: dict[tuple[str, str, str | None, bool], tuple[Compiled, bool]] = {}


def compile_param(param: SearchParam, bound_systems: bool = True) -> tuple[Compiled, bool]:
    """The (key, fn) entries of a parameter and whether it is on the slow path.
    Compiled once per (url, resource type, expression).

    bound_systems: a `code` element with a required binding gets the bound code
    system as its token system (`gender` → administrative-gender|male), as HAPI does.
    """
    cache_key = (param.url, param.resource_type, param.expression, bound_systems)
    found = _cache.get(cache_key)
    if found is None:
        found = _compile(param, bound_systems)
        _cache[cache_key] = found
    return found


def _position_entries(param: SearchParam) -> Compiled:
    code = param.code

    def run(values: list, sink: Any) -> None:
        for v in values:
            found = position(v)
            if found is not None:
                sink.position.append((code, *found))

    return [("position", run)]


def _compile(param: SearchParam, bound_systems: bool) -> tuple[Compiled, bool]:
    if param.type == "special" and param.url == NEAR_URL and param.resource_type == "Location":
        return _position_entries(param), False
    if not param.expression or param.type == "special":
        return [], False
    root = resource_shape(param.resource_type)
    compiler = _Compiler(root)
    try:
        node = parse(param.expression, frozenset({param.resource_type, *ABSTRACT_BASES}))
        composite = param.type == "composite"
        leaf = _composite_leaf(param, compiler) if composite else _row_leaf(param, bound_systems)
        fn = compiler.node(node, root, leaf, True)
    except Unsupported as exc:
        log.debug("slow path for %s on %s: %s", param.url, param.resource_type, exc)
        return [(None, _slow(param))], True
    if fn is None:
        return [], False  # selects nothing the model can hold
    return _root_entries(fn), False


def select(param: SearchParam, resource: dict[str, Any]) -> list[tuple[Any, str]] | None:
    """The values the compiled expression selects, with their static FHIR types
    (for cross-checking against fhirpathpy); None when the parameter is on the slow
    path or is a composite."""
    if not param.expression or param.type in ("special", "composite"):
        return None
    root = resource_shape(param.resource_type)
    compiler = _Compiler(root)

    def leaf(shape: Shape) -> Fn:
        def run(values: list, sink: Any) -> None:
            sink.values.extend((v, shape.name) for v in values)

        return run

    try:
        node = parse(param.expression, frozenset({param.resource_type, *ABSTRACT_BASES}))
        fn = compiler.node(node, root, leaf, True)
    except Unsupported:
        return None
    collector = _Collector(resource)
    if fn is not None:
        fn([resource], collector)
    return collector.values


__all__ = ["Sink", "Unsupported", "compile_param", "component_types", "evaluate", "fhirpath", "select"]
