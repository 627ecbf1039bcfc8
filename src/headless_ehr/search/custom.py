"""The rules a SearchParameter resource must meet to be stored (and so registered).

Checked on every create and update of a SearchParameter (the store's write path), so
a bad definition is refused with 400 and never stored, rather than failing a later
$reindex or silently changing a built-in parameter:

- it cannot redefine an R4 parameter: a (base type, code) pair of the specification
  is refused, unless the resource is that parameter's own definition (same url and
  expression), as when the specification's SearchParameters are loaded;
- its code is a plain name, not a result parameter (`_count`) or `_has`;
- its expression parses as FHIRPath, starts at one of its base types, and every
  element it names along its paths exists in the R4 type model (choice elements and
  `ofType`/`as`/`extension()` included; past `resolve()` or a function whose result
  type is unknown the check stops);
- it uses no regular expression (`matches`, `replaceMatches`): a backtracking regex
  cannot be stopped by the extraction time budget.

SearchParameters that are never registered (retired, or without an expression and
not composite) are stored without these checks.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError
from .extract.compile import Shape, Unsupported, _children, _matches, resource_shape
from .parse import RESULT_PARAMETERS
from .registry import ABSTRACT_BASES, base_search_params

# fhirpathpy's syntax tree costs time quadratic in the nesting of an expression (each
# node keeps its text), and the check runs on the event loop: bounded above R4's
# largest (1,386 characters; 129 steps, unions and calls), at about 0.3 s.
MAX_EXPRESSION_LENGTH = 2000
MAX_EXPRESSION_STEPS = 160  # `.`, `|` and `(` together
_CODE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
_REGEX_FUNCTIONS = frozenset({"matches", "replaceMatches"})
# Functions whose result has the shape of their input (a filter or a subset).
_SAME_SHAPE = frozenset(
    {"where", "first", "last", "tail", "single", "distinct", "skip", "take", "trace", "intersect", "exclude"}
)


def is_registered(resource: dict[str, Any]) -> bool:
    """Whether $reindex registers this SearchParameter (store/reindex.py)."""
    if resource.get("status") == "retired":
        return False
    return bool(resource.get("expression")) or resource.get("type") == "composite"


def check_search_parameter(resource: dict[str, Any]) -> None:
    """Raise 400 (OperationOutcome) when the SearchParameter may not be stored."""
    if not is_registered(resource):
        return
    code = resource.get("code")
    bases = resource.get("base")
    if not isinstance(code, str) or not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        return  # the validator reports the missing or malformed element (422)
    if not _CODE.match(code) or code in RESULT_PARAMETERS or code == "_has":
        _refuse(f"SearchParameter.code '{code}' is not a usable parameter name", "SearchParameter.code")
    for base in bases:
        clash = _builtin(base, code)
        if clash is not None and not _same_definition(resource, clash):
            _refuse(
                f"SearchParameter '{code}' on {base} would redefine the R4 search parameter {clash['url']}"
                f" ({', '.join(clash.get('base', ()))} {code}); choose another code",
                "SearchParameter.code",
            )
    expression = resource.get("expression")
    if isinstance(expression, str) and expression:
        problem = expression_problem(expression, bases)
        if problem is not None:
            _refuse(f"SearchParameter.expression '{expression}': {problem}", "SearchParameter.expression")


def _refuse(message: str, where: str) -> None:
    raise FhirError.of(400, "business-rule", message, where)


def _builtin(base: str, code: str) -> dict[str, Any] | None:
    """The R4 SearchParameter a custom (base, code) would replace, if any. A base of
    Resource/DomainResource reaches every resource type."""
    types = sorted(definitions().resource_types) if base in ABSTRACT_BASES else [base]
    for rtype in types:
        param = base_search_params(rtype).get(code)
        if param is not None:
            return _spec_by_url().get(param.url, {"url": param.url, "base": [rtype]})
    return None


@cache
def _spec_by_url() -> dict[str, dict[str, Any]]:
    return {sp["url"]: sp for sp in definitions().search_parameters}


def _same_definition(resource: dict[str, Any], spec: dict[str, Any]) -> bool:
    return resource.get("url") == spec.get("url") and resource.get("expression") == spec.get("expression")


# -- the expression ------------------------------------------------------------------


class _Problem(Exception):
    pass


def parse_fhirpath(expression: str) -> dict[str, Any]:
    """fhirpathpy's syntax tree of expression; ValueError naming the first syntax
    error (fhirpathpy's own parse() recovers from errors silently)."""
    from antlr4 import CommonTokenStream, InputStream, Token
    from antlr4.error.ErrorListener import ErrorListener
    from antlr4.tree.Tree import ParseTreeWalker
    from fhirpathpy.parser.ASTPathListener import ASTPathListener
    from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
    from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

    errors: list[str] = []

    class Collect(ErrorListener):  # type: ignore[misc]
        def syntaxError(self, recognizer, offending, line, column, msg, e):  # ANTLR's name
            errors.append(f"at {column + 1}: {msg}")

    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(Collect())
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.removeErrorListeners()
    parser.addErrorListener(Collect())
    try:
        tree = parser.expression()
    except Exception as exc:  # the lexer raises on a character it cannot read
        raise ValueError(str(exc) or type(exc).__name__) from None
    if errors:
        raise ValueError(errors[0])
    if tokens.LA(1) != Token.EOF:
        raise ValueError(f"unexpected '{tokens.LT(1).text}' at {tokens.LT(1).column + 1}")
    listener = ASTPathListener()
    try:
        ParseTreeWalker().walk(listener, tree)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return listener.parentStack[0]


def expression_problem(expression: str, bases: list[str]) -> str | None:
    """Why expression cannot index bases (None: it can)."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        return f"longer than {MAX_EXPRESSION_LENGTH} characters"
    if sum(expression.count(c) for c in ".|(") > MAX_EXPRESSION_STEPS:
        return f"more than {MAX_EXPRESSION_STEPS} steps, unions and calls"
    try:
        tree = parse_fhirpath(expression)
    except ValueError as exc:
        return f"not valid FHIRPath ({exc})"
    try:
        return _element_problem(tree, bases)
    except RecursionError:
        return "nested too deeply"


def _element_problem(tree: dict[str, Any], bases: list[str]) -> str | None:
    types = definitions().resource_types
    for base in bases:
        if base in ABSTRACT_BASES:
            continue  # every type: only the syntax and the functions are checked
        if base not in types:
            return f"base '{base}' is not a resource type"
        try:
            _Checker(base, frozenset(bases)).check(tree)
        except _Problem as problem:
            return str(problem)
    if any(base in ABSTRACT_BASES for base in bases):
        try:
            _Checker(None, frozenset(bases)).check(tree)
        except _Problem as problem:
            return str(problem)
    return None


Shapes = list[Shape] | None  # None: not known statically (past resolve(), a boolean, ...)


class _Checker:
    """Walks the syntax tree following element types from the base resource type."""

    def __init__(self, base: str | None, roots: frozenset[str]) -> None:
        self.base = base
        self.root: Shapes = [resource_shape(base)] if base is not None else None
        self.roots = roots | set(ABSTRACT_BASES)

    def check(self, tree: dict[str, Any]) -> None:
        for child in tree.get("children", ()):
            self.eval(child, self.root)

    def eval(self, node: dict[str, Any], context: Shapes) -> Shapes:
        kind = node.get("type")
        children = node.get("children") or []
        if kind == "TermExpression":
            return self.eval(children[0], context)
        if kind == "ParenthesizedTerm":
            return self.eval(children[0], context)
        if kind == "InvocationTerm":
            return self.invoke(children[0], context, context, start=True)
        if kind == "InvocationExpression":
            left = self.eval(children[0], context)
            return self.invoke(children[1], left, context, start=False)
        if kind == "IndexerExpression":
            self.eval(children[1], context)
            return self.eval(children[0], context)
        if kind == "UnionExpression":
            parts = [self.eval(c, context) for c in children]
            return None if any(p is None for p in parts) else [s for p in parts for s in p or ()]
        if kind == "TypeExpression":
            found = self.eval(children[0], context)
            if "as" in (node.get("terminalNodeText") or ()):
                return _of_type(found, _type_name(children[1]))
            return None
        if kind == "ExternalConstantTerm":
            name = _identifier(children[0])
            return self.root if name in ("resource", "rootResource") else None
        for child in children:  # operators, literals: check their operands
            self.eval(child, context)
        return None

    def invoke(self, node: dict[str, Any], shapes: Shapes, context: Shapes, start: bool) -> Shapes:
        kind = node.get("type")
        if kind == "ThisInvocation":
            return context
        if kind == "MemberInvocation":
            name = _identifier(node)
            if start and name[:1].isupper() and name in definitions().resource_types | set(ABSTRACT_BASES):
                if name not in self.roots:
                    raise _Problem(f"it starts at {name}, which is not a base of this parameter")
                return self.root if name == self.base else None
            return self.member(shapes, name)
        if kind == "FunctionInvocation":
            functn = node["children"][0]
            parts = functn.get("children") or []
            name = _identifier(parts[0])
            params = parts[1].get("children", []) if len(parts) > 1 else []
            return self.function(name, params, shapes)
        return None

    def member(self, shapes: Shapes, name: str) -> Shapes:
        if shapes is None:
            return None
        out: list[Shape] = []
        for shape in shapes:
            if shape.model is None:
                return None  # a primitive's or an unknown resource's children: not checked
            out.extend(child for _key, child in _children(shape, name))
        if not out and shapes:
            owners = " or ".join(sorted({s.name for s in shapes}))
            raise _Problem(f"{owners} has no element '{name}'")
        return out

    def function(self, name: str, params: list[dict[str, Any]], shapes: Shapes) -> Shapes:
        if name in _REGEX_FUNCTIONS:
            raise _Problem(f"{name}() is not allowed: a regular expression cannot be bounded in time")
        if name in ("ofType", "as"):
            return _of_type(shapes, _type_name(params[0]) if params else "")
        if name == "is":
            return None  # a type test: its argument names a type, not an element
        if name == "extension":
            return self.member(shapes, "extension")
        for param in params:  # where(x), exists(x), select(x): relative to the input
            inner = self.eval(param, shapes)
            if name in ("select", "repeat"):
                return inner
        if name in _SAME_SHAPE:
            return shapes
        return None


def _identifier(node: dict[str, Any]) -> str:
    """The text of the (first) Identifier at or below node, without backticks."""
    while node.get("type") != "Identifier":
        children = node.get("children") or []
        if not children:
            return ""
        node = children[0]
    return (node.get("text") or "").strip("`")


def _type_name(node: dict[str, Any]) -> str:
    return (node.get("text") or _identifier(node)).strip("`")


def _of_type(shapes: Shapes, type_name: str) -> Shapes:
    if shapes is None or not type_name:
        return None
    try:
        return [s for s in shapes if _matches(s, type_name)]
    except Unsupported:
        return None
