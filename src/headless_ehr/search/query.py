"""A whole search request: filters, sort, paging, totals and includes, as SQL.

The store runs what this module builds (and adds the access predicate), so that
search logic lives here and data access checks live in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError, Issue
from ..fhir.summary import READ_SUMMARY_VALUES
from ..fhir.validation.primitives import decimal_problem
from .extract import OPTIONS
from .paging import decode_cursor, encode_cursor, parse_count
from .parse import DEFAULT_MAX_CHAIN_BRANCHES, RESULT_PARAMETERS, ChainBudget, Clause, Parser
from .registry import HAND_INDEXED, search_params
from .sql import ANY_TYPE, CONTAINED_TABLES, TABLES, SqlBuilder, clause_sql, driver_sql

SUMMARY_VALUES = frozenset({*READ_SUMMARY_VALUES, "count"})  # a search may also count
TOTAL_VALUES = frozenset({"none", "estimate", "accurate"})
CONTAINED_VALUES = frozenset({"false", "true", "both"})
CONTAINED_TYPE_VALUES = frozenset({"container", "contained"})
MAX_INCLUDE_ITERATIONS = 4
# Parameters of each costly kind (_include, _revinclude, _has, chained) per request.
MAX_PARAMETERS_PER_KIND = 10
# A search's SQL text and bind arguments (asyncpg refuses more than 32767 arguments).
MAX_SQL_CHARS = 1024 * 1024
MAX_SQL_ARGS = 30_000
# Parameters that apply to every resource type (answered from the resource row or
# shared index tables), so a search across several types may always use them.
_COMMON_CODES = frozenset({"_id", "_lastUpdated", "_text", "_content", "_list", "_has"})


@dataclass(frozen=True)
class SearchLimits:
    """What one search request may cost (settings EHR_MAX_CHAIN_BRANCHES, EHR_MAX_INCLUDES)."""

    max_chain_branches: int = DEFAULT_MAX_CHAIN_BRANCHES
    max_includes: int = 1000  # included resources per page


@dataclass(frozen=True)
class SortKey:
    code: str
    descending: bool
    kind: str  # id | lastUpdated | text | timestamp | numeric


@dataclass(frozen=True)
class Include:
    source_type: str | None  # the type whose reference parameter is followed; None for '*' (any)
    param: str | None  # None for '*'
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass
class SearchRequest:
    resource_types: list[str]
    clauses: dict[str, list[Clause]]
    count: int
    sort: list[SortKey] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    total: str | None = None
    summary: str | None = None
    elements: list[str] | None = None
    issues: list[Issue] = field(default_factory=list)
    contained: str = "false"  # _contained: false | true | both
    contained_type: str = "container"  # _containedType: container | contained

    @property
    def several_types(self) -> bool:
        """Whether matches may be of several types (ids are unique per type only)."""
        return len(self.resource_types) > 1 or self.resource_types == [ANY_TYPE] or self.contained != "false"


def _first(params: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in params if k == name), None)


def parse_request(
    resource_types: list[str],
    params: list[tuple[str, str]],
    *,
    strict: bool,
    default_count: int = 20,
    max_count: int = 1000,
    limits: SearchLimits | None = None,
    local_base: str | None = None,
) -> SearchRequest:
    """Parse and check every parameter of a type- or system-level search (local_base:
    this server's base, under which absolute reference values are local)."""
    limits = limits or SearchLimits()
    _check_costly_kinds(params)
    if len(resource_types) > 1:
        _check_common(resource_types, params)
    clauses: dict[str, list[Clause]] = {}
    issues: list[Issue] = []
    budget = ChainBudget(limits.max_chain_branches)  # shared by every type and hop
    for rtype in resource_types:
        parser = Parser(rtype, strict=strict, budget=budget, local_base=local_base)
        clauses[rtype] = parser.parse(params)
        if rtype == resource_types[0]:
            issues = parser.issues
    count = default_count
    raw = _first(params, "_count")
    if raw is not None:
        count = parse_count(raw, max_count)
    total = _first(params, "_total")
    if total is not None and total not in TOTAL_VALUES:
        raise FhirError.of(400, "invalid", f"_total must be one of {sorted(TOTAL_VALUES)}")
    summary = _first(params, "_summary")
    if summary is not None and summary not in SUMMARY_VALUES:
        raise FhirError.of(400, "invalid", f"_summary must be one of {sorted(SUMMARY_VALUES)}")
    contained, contained_type = _check_contained(params, resource_types, clauses)
    elements = None
    raw = _first(params, "_elements")
    if raw is not None:
        elements = [e.strip() for e in raw.split(",") if e.strip()]
    request = SearchRequest(resource_types, clauses, count, total=total, summary=summary, elements=elements)
    request.issues = issues
    request.contained = contained
    request.contained_type = contained_type
    sort = _first(params, "_sort")
    if sort:
        if contained != "false":
            raise FhirError.of(400, "not-supported", "_sort cannot be combined with _contained=true|both")
        request.sort = _parse_sort(resource_types, sort)
    for name, value in params:
        base, _, mod = name.partition(":")
        if base in ("_include", "_revinclude"):
            if mod and mod != "iterate" and mod != "recurse":
                raise FhirError.of(400, "invalid", f"unknown modifier '{name}'")
            request.includes.append(_parse_include(value, base == "_revinclude", bool(mod), resource_types))
    if request.includes and contained_type == "contained":
        # contained resources' references are indexed apart (search_contained), not followed by includes
        raise FhirError.of(
            400, "not-supported", "_include and _revinclude cannot be combined with _containedType=contained"
        )
    return request


def _check_contained(
    params: list[tuple[str, str]], resource_types: list[str], clauses: dict[str, list[Clause]]
) -> tuple[str, str]:
    """`_contained` / `_containedType` (R4 search.html#contained): `false` (the default)
    matches resources themselves, `true` resources contained in others, `both` either.
    Contained matches are returned as their containers (`_containedType=container`) or
    as themselves (`contained`). Contained resources are searched on their own
    parameters only: chains, `_has` and the parameters answered from the resource row
    are refused with them."""
    contained = _first(params, "_contained") or "false"
    if contained not in CONTAINED_VALUES:
        raise FhirError.of(400, "invalid", f"_contained must be one of {sorted(CONTAINED_VALUES)}, got '{contained}'")
    contained_type = _first(params, "_containedType") or "container"
    if contained_type not in CONTAINED_TYPE_VALUES:
        raise FhirError.of(
            400, "invalid", f"_containedType must be one of {sorted(CONTAINED_TYPE_VALUES)}, got '{contained_type}'"
        )
    if contained == "false":
        return contained, "container"  # nothing contained is returned, so its form does not matter
    if not OPTIONS.contained:
        raise FhirError.of(
            400,
            "not-supported",
            f"_contained={contained}: contained resources are not indexed on this server (EHR_INDEX_CONTAINED)",
        )
    if len(resource_types) != 1 or resource_types[0] == ANY_TYPE:
        raise FhirError.of(400, "not-supported", f"_contained={contained} needs a search of one resource type")
    for clause in clauses[resource_types[0]]:
        if clause.param is None or clause.chain is not None or clause.has is not None:
            raise FhirError.of(400, "not-supported", f"'{clause.name}' cannot be used with _contained={contained}")
    return contained, contained_type


def _param_code(name: str) -> str:
    return name.split(":", 1)[0].split(".", 1)[0]


def _check_costly_kinds(params: list[tuple[str, str]]) -> None:
    """At most MAX_PARAMETERS_PER_KIND each of _include, _revinclude, _has and chains."""
    counts = {"_include": 0, "_revinclude": 0, "_has": 0, "chained": 0}
    for name, _ in params:
        code = _param_code(name)
        kind = code if code in counts else "chained" if "." in name and code not in RESULT_PARAMETERS else None
        if kind is None:
            continue
        counts[kind] += 1
        if counts[kind] > MAX_PARAMETERS_PER_KIND:
            what = f"{kind} parameters" if kind == "chained" else f"'{kind}' parameters"
            raise FhirError.of(400, "too-costly", f"a search may have at most {MAX_PARAMETERS_PER_KIND} {what}")


def _check_common(resource_types: list[str], params: list[tuple[str, str]]) -> None:
    """R4 search.html#all: a search across several types may only use parameters that
    every one of them defines; one applied to some types only would leave the others
    unfiltered. A parameter that no type knows is an unknown parameter as usual."""
    for name, _ in params:
        code = _param_code(name)
        if code in RESULT_PARAMETERS or code in _COMMON_CODES:
            continue
        lacking = [t for t in resource_types if code not in search_params(t)]
        if lacking and len(lacking) < len(resource_types):
            raise FhirError.of(
                400,
                "not-supported",
                f"search parameter '{code}' is not defined for {', '.join(lacking)};"
                " a search across several types takes only parameters that all of them have",
            )


def _parse_sort(resource_types: list[str], raw: str) -> list[SortKey]:
    keys = []
    for item in raw.split(","):
        item = item.strip()
        descending = item.startswith("-")
        code = item.lstrip("-")
        if code == "_id":
            keys.append(SortKey(code, descending, "id"))
            continue
        if code == "_lastUpdated":
            keys.append(SortKey(code, descending, "lastUpdated"))
            continue
        missing = [t for t in resource_types if code not in search_params(t)]
        if len(missing) == len(resource_types):
            raise FhirError.of(400, "invalid", f"cannot sort on unknown parameter '{code[:100]}'")
        if missing:  # R4 search.html#all: a parameter of a multi-type search must apply to every type
            raise FhirError.of(
                400, "invalid", f"cannot sort on '{code}': it is not a parameter of {', '.join(missing[:10])}"
            )
        types = {search_params(t)[code].type for t in resource_types}
        if len(types) > 1:
            raise FhirError.of(400, "invalid", f"cannot sort on '{code}': its type differs between the types searched")
        kind = types.pop()
        if kind in ("composite", "special"):
            raise FhirError.of(400, "not-supported", f"cannot sort on {kind} parameter '{code}'")
        sort_kind = {"date": "timestamp", "number": "numeric", "quantity": "numeric"}.get(kind, "text")
        keys.append(SortKey(code, descending, sort_kind))
    return keys


def _parse_include(value: str, reverse: bool, iterate: bool, resource_types: list[str]) -> Include:
    if value == "*":
        return Include(None, None, None, iterate, reverse)
    parts = value.split(":")
    if len(parts) not in (2, 3) or parts[0] not in definitions().resource_types:
        raise FhirError.of(400, "invalid", f"_include value '{value}' must be Type:param[:target]")
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if code != "*":
        param = search_params(source).get(code)
        if param is None or param.type != "reference":
            raise FhirError.of(400, "invalid", f"'{code}' is not a reference parameter of {source}")
    if target is not None and target not in definitions().resource_types:
        raise FhirError.of(400, "invalid", f"unknown target type '{target}' in '{value}'")
    return Include(source, None if code == "*" else code, target, iterate, reverse)


# -- SQL ----------------------------------------------------------------------------


def filter_sql(b: SqlBuilder, request: SearchRequest, alias: str = "r") -> str:
    """The WHERE condition (without access restrictions) over resource alias r."""
    if request.contained == "true":
        return _contained_filter(b, request, alias, None)
    per_type = [_own_filter(b, request, rtype, alias) for rtype in request.resource_types]
    if request.contained != "false":
        return _contained_filter(b, request, alias, per_type[0])
    return per_type[0] if len(per_type) == 1 else "(" + " OR ".join(per_type) + ")"


def _own_filter(b: SqlBuilder, request: SearchRequest, rtype: str, alias: str) -> str:
    """Resource row alias is a current resource of rtype meeting every clause of it."""
    conds = [f"NOT {alias}.deleted"]
    if rtype != ANY_TYPE:
        conds.insert(0, f"{alias}.resource_type = {b.arg(rtype)}")
    conds += [clause_sql(b, c, rtype, alias) for c in request.clauses[rtype]]
    return "(" + " AND ".join(conds) + ")"


def _contained_conditions(b: SqlBuilder, request: SearchRequest, c: str) -> str:
    """Row c of search_contained_resource is a contained resource of the searched type
    meeting every clause. The clauses run on the contained resources' index views,
    keyed by contained resource, so all of them must hold for the same one."""
    rtype = request.resource_types[0]
    b.tables = CONTAINED_TABLES
    try:
        conds = [f"{c}.resource_type = {b.arg(rtype)}"]
        conds += [clause_sql(b, clause, rtype, c) for clause in request.clauses[rtype]]
    finally:
        b.tables = TABLES
    return " AND ".join(conds)


def _contained_filter(b: SqlBuilder, request: SearchRequest, alias: str, own: str | None) -> str:
    """Containers (of any type) holding a resource of the searched type that meets
    every clause (`_contained=true`), or that and the resources themselves (`both`)."""
    c = b.alias("c")
    holds = (
        f"({alias}.resource_type, {alias}.id) IN (SELECT {c}.container_type, {c}.container_id"
        f" FROM search_contained_resource {c} WHERE {_contained_conditions(b, request, c)})"
    )
    if own is None:  # _contained=true
        return f"(NOT {alias}.deleted AND {holds})"
    return f"({own} OR (NOT {alias}.deleted AND {holds}))"


def _contained_matches_sql(b: SqlBuilder, request: SearchRequest, restrict: Restrict | None) -> str:
    """`_containedType=contained`: one row per match, with the resource columns of the
    match's own row (`both`) or of the container of a matching contained resource
    (`contained_id` set: the match is that resource in the container's content). Its
    `id` is the key that orders and pages them: a resource's own id, or
    `ContainerType/containerId#containedId` for a contained one (never an id: ids
    have no '/' or '#')."""
    arms = []
    if request.contained == "both":
        where = _own_filter(b, request, request.resource_types[0], "r")
        if restrict is not None:
            where += f" AND ({restrict(b, 'r')})"
        arms.append(f"SELECT {_RESOURCE_COLUMNS}, NULL::text AS contained_id FROM resource r WHERE {where}")
    c = b.alias("c")
    where = f"NOT r.deleted AND {_contained_conditions(b, request, c)}"
    if restrict is not None:
        where += f" AND ({restrict(b, 'r')})"
    arms.append(
        f"SELECT {c}.resource_type, {c}.id, r.version_id, r.last_updated, r.content,"
        f" substr({c}.id, strpos({c}.id, '#') + 1) AS contained_id"
        f" FROM search_contained_resource {c}"
        f" JOIN resource r ON r.resource_type = {c}.container_type AND r.id = {c}.container_id WHERE {where}"
    )
    return " UNION ALL ".join(arms)


def _contained_page(request: SearchRequest, cursor: str | None, restrict: Restrict | None, b: SqlBuilder) -> PageQuery:
    """A page of `_containedType=contained` matches, keyset-paged on their key."""
    matches = _contained_matches_sql(b, request, restrict)
    keys = [SortKey("_id", False, "id")]
    backwards = False
    outer = ""
    if cursor:
        values, backwards = _cursor_values(cursor, keys)
        outer = " WHERE " + _after(b, ["q.id"], keys, values, backwards)
    sql = (
        f"SELECT q.* FROM ({matches}) q{outer} ORDER BY q.id {'DESC' if backwards else 'ASC'} LIMIT {request.count + 1}"
    )
    return PageQuery(sql, b.args, 0, backwards)


def _sort_expr(b: SqlBuilder, key: SortKey, request: SearchRequest, alias: str) -> str:
    if key.kind == "id":
        return f"{alias}.id"
    if key.kind == "lastUpdated":
        return f"{alias}.last_updated"
    if key.kind == "type":
        return f"{alias}.resource_type"
    rtype = request.resource_types[0]
    param = search_params(rtype)[key.code]
    table = TABLES[param.type]
    column = {
        "string": "value",
        "token": "code",
        "date": "high" if key.descending else "low",
        "number": "value",
        "quantity": "value",
        "uri": "uri",
        "reference": "coalesce(s.target_type || '/' || s.target_id, s.url)",
    }[param.type]
    column = column if "(" in column else f"s.{column}"
    agg = "max" if key.descending else "min"
    return (
        f"(SELECT {agg}({column}) FROM {table} s WHERE s.resource_type = {alias}.resource_type"
        f" AND s.resource_id = {alias}.id AND s.param = {b.arg(param.code)})"
    )


_CASTS = {
    "type": "::text",
    "id": "::text",
    "lastUpdated": "::timestamptz",
    "text": "::text",
    "timestamp": "::timestamptz",
    "numeric": "::numeric",
}


def _after(b: SqlBuilder, cols: list[str], keys: list[SortKey], values: list[Any], backwards: bool) -> str:
    """Rows strictly after (or, backwards, before) the cursor row in the order
    (keys..., id), NULLS LAST, expanded lexicographically key by key."""
    if not cols:
        return "false"
    col, key, value = cols[0], keys[0], values[0]
    rest = _after(b, cols[1:], keys[1:], values[1:], backwards)
    if value is None:  # NULLS LAST: only NULLs follow a NULL; every non-NULL precedes it
        if backwards:
            return f"({col} IS NOT NULL OR ({col} IS NULL AND {rest}))"
        return f"({col} IS NULL AND {rest})"
    bound = b.arg(value, _CASTS[key.kind])
    op = ">" if (not key.descending) != backwards else "<"
    moved = f"{col} {op} {bound}" if backwards else f"({col} {op} {bound} OR {col} IS NULL)"
    return f"({moved} OR ({col} = {bound} AND {rest}))"


def _to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _from_json(value: Any, kind: str) -> Any:
    """A sort value from a cursor; ValueError when the client changed its type or range."""
    if value is None:
        return None
    if type(value) is not str:  # _to_json writes every kind as a string
        raise ValueError("not a cursor value")
    if kind in ("lastUpdated", "timestamp"):
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError("not a cursor value")
        return moment
    if kind == "numeric":
        number = Decimal(value)
        if decimal_problem(number) is not None:
            raise ValueError("not a cursor value")
        return number
    return value


@dataclass
class PageQuery:
    sql: str
    args: list[object]
    sort_count: int
    backwards: bool
    # run when `sql` returns too few rows: the rows with no sort value, which sort last
    # (its LIMIT is the `{limit}` placeholder, filled with how many are still missing)
    fill: tuple[str, list[object]] | None = None


@dataclass(frozen=True)
class Restrict:
    """An extra predicate on every matched row (compartment, access control):
    predicate(builder, alias). id_only: it reads nothing of the row but its id, so it
    also applies where only ids are at hand (the index-driven page)."""

    predicate: Callable[[SqlBuilder, str], str]
    id_only: bool = True
    # it is not bounded by a few patients' records (access policy rules, Consents), so a
    # page is read in the search's own order (a sort index, the driving clause) with it
    # checked per row; else (a patient's token, a compartment search) the restriction
    # bounds what is read (_restricted_sorted_page) and the planner may drive from it
    broad: bool = False

    def __call__(self, b: SqlBuilder, alias: str) -> str:
        return self.predicate(b, alias)


def _cursor_values(cursor: str, keys: list[SortKey]) -> tuple[list[Any], bool]:
    state = decode_cursor(cursor)
    if not isinstance(state, dict) or not isinstance(state.get("k"), list) or len(state["k"]) != len(keys):
        raise FhirError.of(400, "invalid", "the paging cursor does not fit this search")
    try:
        values = [_from_json(v, k.kind) for v, k in zip(state["k"], keys, strict=True)]
    except (TypeError, ValueError, ArithmeticError):
        raise FhirError.of(400, "invalid", "malformed paging cursor") from None
    return values, state.get("d") == "p"


def _driven_page(
    request: SearchRequest, cursor: str | None, restrict: Restrict | None, b: SqlBuilder
) -> PageQuery | None:
    """A page in id order whose ids come straight from the index of its most
    selective-looking clause: the other clauses are checked on those ids, and only
    the page's own rows are read from `resource` (deleted resources have no index
    rows, so none is lost). None when the search does not have that shape."""
    if request.sort or request.several_types:
        return None
    rtype = request.resource_types[0]
    clauses = request.clauses[rtype]
    if any(_reads_row(c) for c in clauses) or (restrict is not None and not restrict.id_only):
        return None  # needs the resource row itself (decided before any argument is bound)
    driver = driving = None
    for i, clause in enumerate(clauses):
        driver = driver_sql(b, clause, rtype)
        if driver is not None:
            driving = i
            break
    if driver is None:
        return None
    conds = [clause_sql(b, c, rtype, "q") for i, c in enumerate(clauses) if i != driving]
    backwards = False
    if cursor:
        values, backwards = _cursor_values(cursor, [SortKey("_id", False, "id")])
        conds.append(_after(b, ["q.id"], [SortKey("_id", False, "id")], values, backwards))
    order = "DESC" if backwards else "ASC"
    source = f"({driver}) q"
    if restrict is not None and restrict.broad and len(conds) > 0:
        # a broad restriction is checked row by row (search/access.py): on the rows the
        # search's own clauses leave, not on every row of the driving index (the
        # planner applies a row's own conditions at its scan, below the joins)
        source = f"(SELECT q.id FROM {source} WHERE {' AND '.join(conds)} ORDER BY q.id {order} OFFSET 0) q"
        conds = []
    if restrict is not None:
        conds.append(restrict(b, "q"))
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    sql = (
        f"SELECT {_RESOURCE_COLUMNS} FROM resource r WHERE r.resource_type = {b.arg(rtype)} AND NOT r.deleted"
        f" AND r.id IN (SELECT q.id FROM {source}{where} ORDER BY q.id {order} LIMIT {request.count + 1})"
        f" ORDER BY r.id {order}"
    )
    return PageQuery(sql, b.args, 0, backwards)


_INDEX_SORT = {"date": None, "string": "value", "token": "code", "number": "value", "quantity": "value", "uri": "uri"}


def _index_sorted_page(
    request: SearchRequest, cursor: str | None, restrict: Restrict | None, b: SqlBuilder
) -> PageQuery | None:
    """A page of an unfiltered search sorted on one parameter, read from that
    parameter's index in sort order (one row per resource: its extreme value), so the
    cost is the page's, not the type's. Resources without a value follow (`fill`).
    None when the search has filters (then the matches are few enough to sort), a
    restriction (see _restricted_sorted_page), several sort keys, or is paging backwards."""
    rtype = request.resource_types[0]
    if len(request.sort) != 1 or request.several_types or request.clauses[rtype]:
        return None
    if restrict is not None and not restrict.broad:
        return None
    shape = _sort_index(request, cursor)
    if shape is None:
        return None
    key, param, values = shape
    keys = [key, SortKey("_id", False, "id")]
    column = _INDEX_SORT[param.type] or ("high" if key.descending else "low")
    table = TABLES[param.type]
    p_type, p_code = b.arg(rtype), b.arg(param.code)
    keep = ">" if key.descending else "<"  # no other row of the resource is further out
    conds = [
        f"x.resource_type = {p_type}",
        f"x.param = {p_code}",
        "NOT r.deleted",
        f"NOT EXISTS (SELECT 1 FROM {table} y WHERE y.resource_type = x.resource_type AND y.param = x.param"
        f" AND y.resource_id = x.resource_id AND (y.{column} {keep} x.{column}"
        f" OR (y.{column} = x.{column} AND y.ctid > x.ctid)))",
    ]
    if cursor and values[0] is not None:
        conds.append(_after(b, [f"x.{column}", "r.id"], keys, values, False))
    if restrict is not None:
        conds.append(restrict(b, "r"))
    limit = request.count + 1
    if cursor and values[0] is None:
        dated = None  # the cursor is already among the resources without a value
    else:
        dated = (
            f"SELECT {_RESOURCE_COLUMNS}, x.{column} AS s0 FROM {table} x"
            f" JOIN resource r ON r.resource_type = x.resource_type AND r.id = x.resource_id"
            f" WHERE {' AND '.join(conds)}"
            f" ORDER BY x.{column} {'DESC' if key.descending else 'ASC'}, r.id LIMIT {limit}"
        )
    fb = SqlBuilder()
    fb.access = b.access
    matching = f"r.resource_type = {fb.arg(rtype)} AND NOT r.deleted"
    if restrict is not None:
        matching += f" AND {restrict(fb, 'r')}"
    return _then_without_value(dated, b, fb, matching, table, param.code, cursor, values, limit)


def _sort_index(request: SearchRequest, cursor: str | None) -> tuple[SortKey, Any, list[Any]] | None:
    """The one sort key, its parameter and the cursor's values, when a page can be read
    from the parameter's index (one sort key on an indexed parameter, paging forwards)."""
    rtype = request.resource_types[0]
    if len(request.sort) != 1 or request.several_types:
        return None
    key = request.sort[0]
    param = search_params(rtype).get(key.code)
    if key.kind in ("id", "lastUpdated") or param is None or param.type not in _INDEX_SORT:
        return None
    values: list[Any] = [None, None]
    if cursor:
        values, backwards = _cursor_values(cursor, [key, SortKey("_id", False, "id")])
        if backwards:
            return None
    return key, param, values


def _reads_row(clause: Clause) -> bool:
    """A clause answered from the resource row itself (not from ids): `_lastUpdated`."""
    return clause.param is None and clause.name.split(":")[0] == "_lastUpdated"


def _restricted_sorted_page(
    request: SearchRequest, cursor: str | None, restrict: Restrict | None, b: SqlBuilder
) -> PageQuery | None:
    """A page of a restricted search (a patient's token, a compartment) sorted on one
    parameter: the sort values of the reachable matches are aggregated straight from
    the parameter's index (one row per resource, its extreme value) and only the page's
    rows are read from `resource`. The cost follows the rows the caller may reach (one
    patient's), never the type's: walking the type's sort index instead would pass
    over every other patient's rows. Resources without a value follow (`fill`)."""
    if restrict is None:
        return None
    shape = _sort_index(request, cursor)
    if shape is None:
        return None
    key, param, values = shape
    rtype = request.resource_types[0]
    keys = [key, SortKey("_id", False, "id")]
    column = _INDEX_SORT[param.type] or ("high" if key.descending else "low")
    agg = "max" if key.descending else "min"
    table = TABLES[param.type]
    limit = request.count + 1

    def matches(builder: SqlBuilder, alias: str) -> str:
        conds = [f"{alias}.resource_type = {builder.arg(rtype)}", f"NOT {alias}.deleted"]
        conds += [clause_sql(builder, c, rtype, alias) for c in request.clauses[rtype]]
        conds.append(restrict(builder, alias))
        return " AND ".join(conds)

    dated = None
    if not (cursor and values[0] is None):  # else the cursor is among the resources without a value
        # one row per reachable resource with a value: its extreme one (deleted resources
        # have no index rows). The index rows are named by resource id (`q.id`) so the
        # restriction and the filters, which need only ids, join them before aggregating:
        # only the reachable rows' index entries are read.
        values_of = (
            f"SELECT x.resource_id AS id, x.{column} AS v FROM {table} x"
            f" WHERE x.resource_type = {b.arg(rtype)} AND x.param = {b.arg(param.code)}"
        )
        if restrict.id_only and not any(_reads_row(c) for c in request.clauses[rtype]):
            conds = [clause_sql(b, c, rtype, "q") for c in request.clauses[rtype]]
            conds.append(restrict(b, "q"))
        else:
            m = b.alias("m")
            conds = [f"q.id IN (SELECT {m}.id FROM resource {m} WHERE {matches(b, m)})"]
        per_resource = f"SELECT q.id, {agg}(q.v) AS s0 FROM ({values_of}) q WHERE {' AND '.join(conds)} GROUP BY q.id"
        conds = []
        if cursor:
            conds.append(_after(b, ["q.s0", "q.id"], keys, values, False))
        order = "DESC" if key.descending else "ASC"
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        page = f"SELECT q.id, q.s0 FROM ({per_resource}) q{where} ORDER BY q.s0 {order}, q.id LIMIT {limit}"
        dated = (
            f"SELECT {_RESOURCE_COLUMNS}, p.s0 FROM ({page}) p"
            f" JOIN resource r ON r.resource_type = {b.arg(rtype)} AND r.id = p.id"
            f" ORDER BY p.s0 {order}, r.id"
        )
    fb = SqlBuilder()
    fb.access = b.access
    return _then_without_value(dated, b, fb, matches(fb, "r"), table, param.code, cursor, values, limit)


def _broadly_restricted_page(
    request: SearchRequest, cursor: str | None, restrict: Restrict | None, b: SqlBuilder
) -> PageQuery | None:
    """A page in id order of a search of one type under a broad restriction (Restrict.broad):
    the matches in id order, the restriction checked on them one by one until the page is
    full (`OFFSET 0` keeps the planner from checking every match before ordering them)."""
    if restrict is None or not restrict.broad or request.sort or request.several_types:
        return None
    keys = [SortKey("_id", False, "id")]
    conds = [filter_sql(b, request)]
    backwards = False
    if cursor:
        values, backwards = _cursor_values(cursor, keys)
        conds.append(_after(b, ["r.id"], keys, values, backwards))
    order = "DESC" if backwards else "ASC"
    matches = f"SELECT r.* FROM resource r WHERE {' AND '.join(conds)} ORDER BY r.id {order} OFFSET 0"
    sql = (
        f"SELECT {_RESOURCE_COLUMNS} FROM ({matches}) r WHERE {restrict(b, 'r')}"
        f" ORDER BY r.id {order} LIMIT {request.count + 1}"
    )
    return PageQuery(sql, b.args, 0, backwards)


def _then_without_value(
    dated: str | None,
    b: SqlBuilder,
    fb: SqlBuilder,
    matching: str,
    table: str,
    code: str,
    cursor: str | None,
    values: list[Any],
    limit: int,
) -> PageQuery:
    """A page sorted on one parameter: the resources with a value (`dated`, of `b`'s args;
    None when the cursor is already among the others), then the `matching` resources
    (conditions on `r`, of `fb`'s args) without one, in id order (`fill`)."""
    fill_conds = [
        matching,
        f"NOT EXISTS (SELECT 1 FROM {table} y WHERE y.resource_type = r.resource_type"
        f" AND y.param = {fb.arg(code)} AND y.resource_id = r.id)",
    ]
    if cursor and values[0] is None:
        fill_conds.append(f"r.id > {fb.arg(values[1])}")
    fill = (
        f"SELECT {_RESOURCE_COLUMNS}, NULL AS s0 FROM resource r WHERE {' AND '.join(fill_conds)}"
        " ORDER BY r.id LIMIT {limit}",
        fb.args,
    )
    if dated is None:
        return PageQuery(fill[0].replace("{limit}", str(limit)), fill[1], 1, False)
    return PageQuery(dated, b.args, 1, False, fill)


def check_size(sql: str, args: list[object]) -> str:
    """sql, unless it is too large to send (a search multiplied out by its ORs and chains)."""
    if len(sql) > MAX_SQL_CHARS or len(args) > MAX_SQL_ARGS:
        raise FhirError.of(400, "too-costly", "this search is too large to run; use fewer values, chains or types")
    return sql


def page_query(request: SearchRequest, cursor: str | None, restrict: Restrict | None, b: SqlBuilder) -> PageQuery:
    """SELECT of one page (count + 1 rows, to know whether another page follows)."""
    query = _page_query(request, cursor, restrict, b)
    check_size(query.sql, query.args)
    return query


def _page_query(request: SearchRequest, cursor: str | None, restrict: Restrict | None, b: SqlBuilder) -> PageQuery:
    if request.contained_type == "contained":
        return _contained_page(request, cursor, restrict, b)
    shaped = (
        _driven_page(request, cursor, restrict, b)
        or _index_sorted_page(request, cursor, restrict, b)
        or _restricted_sorted_page(request, cursor, restrict, b)
        or _broadly_restricted_page(request, cursor, restrict, b)
    )
    if shaped is not None:
        return shaped
    keys = [*request.sort, SortKey("_id", False, "id")]
    if request.several_types:  # ids are unique per type only
        keys.insert(len(request.sort), SortKey("_type", False, "type"))
    exprs = [_sort_expr(b, k, request, "r") for k in keys[:-1]]
    where = filter_sql(b, request)
    if restrict is not None:
        where += f" AND ({restrict(b, 'r')})"
    backwards = False
    outer = ""
    cols = [f"q.s{i}" for i in range(len(exprs))] + ["q.id"]
    if cursor:
        values, backwards = _cursor_values(cursor, keys)
        outer = " WHERE " + _after(b, cols, keys, values, backwards)
    directions = []
    for col, key in zip(cols, keys, strict=True):
        desc = key.descending != backwards
        directions.append(f"{col} {'DESC' if desc else 'ASC'} NULLS {'FIRST' if backwards else 'LAST'}")
    select_keys = "".join(f", {e} AS s{i}" for i, e in enumerate(exprs))
    sql = (
        f"SELECT q.* FROM (SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.content{select_keys}"
        f" FROM resource r WHERE {where}) q{outer}"
        f" ORDER BY {', '.join(directions)} LIMIT {request.count + 1}"
    )
    if not request.sort and not cursor and len(keys) == 1:
        sql = (
            "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.content FROM resource r"
            f" WHERE {where} ORDER BY r.id LIMIT {request.count + 1}"
        )
    return PageQuery(sql, b.args, len(exprs), backwards)


def cursor_for(row: Any, request: SearchRequest, sort_count: int, backwards: bool) -> str:
    """The cursor naming row as the edge of a page, read forwards (next) or backwards (previous)."""
    values = [_to_json(row[f"s{i}"]) for i in range(sort_count)] + [row["id"]]
    return encode_cursor({"k": values, "d": "p" if backwards else "n"})


def count_query(request: SearchRequest, restrict: Restrict | None, b: SqlBuilder) -> str:
    if request.contained_type == "contained":
        return check_size(f"SELECT count(*) FROM ({_contained_matches_sql(b, request, restrict)}) q", b.args)
    where = filter_sql(b, request)
    if restrict is not None:
        where += f" AND ({restrict(b, 'r')})"
    return check_size(f"SELECT count(*) FROM resource r WHERE {where}", b.args)


_RESOURCE_COLUMNS = "r.resource_type, r.id, r.version_id, r.last_updated, r.content"


def _param_condition(b: SqlBuilder, param: str | None) -> str:
    """The include's parameter; for `*`, every reference parameter (not the references
    indexed by hand for access rules, which are no search parameters)."""
    if param:
        return f"x.param = {b.arg(param)}"
    return f"x.param <> ALL({b.arg(list(HAND_INDEXED))}::text[])"


def include_sql(b: SqlBuilder, inc: Include, sources: list[Any], limit: int, visible: str | None = None) -> str | None:
    """At most limit of the resources one _include/_revinclude brings in for the given
    resources (anything with resource_type and id), or None when none can match;
    visible: the caller's access predicate on the included rows (alias r)."""
    where = "NOT r.deleted" if visible is None else f"NOT r.deleted AND {visible}"
    if inc.reverse:
        targets = [s for s in sources if inc.target_type in (None, s.resource_type)]
        if not targets:
            return None
        conds = [] if inc.source_type is None else [f"x.resource_type = {b.arg(inc.source_type)}"]
        conds.append(_param_condition(b, inc.param))
        types, ids = b.arg([s.resource_type for s in targets]), b.arg([s.id for s in targets])
        pairs = f"(x.target_type, x.target_id) IN (SELECT * FROM unnest({types}::text[], {ids}::text[]))"
        conds.append(pairs)
        return (
            f"SELECT {_RESOURCE_COLUMNS} FROM resource r WHERE {where}"
            f" AND (r.resource_type, r.id) IN (SELECT x.resource_type, x.resource_id"
            f" FROM search_reference x WHERE {' AND '.join(conds)}) LIMIT {int(limit)}"
        )
    if inc.source_type is None:  # '*': every reference of every source
        types, ids = b.arg([s.resource_type for s in sources]), b.arg([s.id for s in sources])
        conds = [f"(x.resource_type, x.resource_id) IN (SELECT * FROM unnest({types}::text[], {ids}::text[]))"]
    else:
        source_ids = [s.id for s in sources if s.resource_type == inc.source_type]
        if not source_ids:
            return None
        conds = [f"x.resource_type = {b.arg(inc.source_type)}", f"x.resource_id = ANY({b.arg(source_ids)}::text[])"]
    conds.append("x.target_id IS NOT NULL")
    conds.append(_param_condition(b, inc.param))
    if inc.target_type:
        conds.append(f"x.target_type = {b.arg(inc.target_type)}")
    return (
        f"SELECT {_RESOURCE_COLUMNS} FROM resource r WHERE {where}"
        f" AND (r.resource_type, r.id) IN (SELECT x.target_type, x.target_id"
        f" FROM search_reference x WHERE {' AND '.join(conds)}) LIMIT {int(limit)}"
    )
