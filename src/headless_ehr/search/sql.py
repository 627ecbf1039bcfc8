"""Compile parsed search clauses to SQL predicates over the typed index tables.

Every value is a bind parameter; identifiers in the SQL text come only from this
module. Each predicate is an `id IN (subquery)` over one index table, which lets
PostgreSQL drive the join from whichever side is more selective (the index rows of a
rare code, or the few resources of a patient). Chains nest the same shape; `_has`
turns it around through the reverse reference index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

from ..fhir.outcome import FhirError
from .extract.compile import component_types
from .extract.ucum import canonical as ucum_canonical
from .normalize import MAX_INSTANT, MIN_INSTANT, date_range, normalize_string, number_range
from .parse import Clause, parse_near, split_prefix, split_unescaped, unescape
from .registry import SearchParam, search_params
from .terminology import subsumed_codes, value_set_codes

TABLES = {
    "token": "search_token",
    "string": "search_string",
    "reference": "search_reference",
    "date": "search_date",
    "number": "search_number",
    "quantity": "search_quantity",
    "uri": "search_uri",
    "composite": "search_composite",
    "special": "search_position",  # the one special parameter searched: near (Location.position)
}
# The same tables for contained resources (`_contained`): views over search_contained
# with the typed tables' columns, owned by the contained resource's key.
CONTAINED_TABLES = {
    kind: ("search_contained_position" if kind == "special" else f"search_contained_{kind}") for kind in TABLES
}
EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)
UCUM = "http://unitsofmeasure.org"
ANY_TYPE = "Resource"  # the resource type of a system search without _type


def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class SqlBuilder:
    """Collects bind arguments and hands out unique table aliases."""

    def __init__(self, args: list[object] | None = None):
        self.args: list[object] = args if args is not None else []
        self._aliases = 0
        self.tables = TABLES  # CONTAINED_TABLES while compiling clauses on contained resources
        # access control on the other types a clause touches (chains, _has, _list):
        # (builder, type, alias) -> predicate or None (search/access.py); None: no check
        self.access: Callable[[SqlBuilder, str, str], str | None] | None = None
        # index conditions as a per-row probe (`EXISTS … OFFSET 0`) instead of `id IN
        # (…)`: for access rules' criteria, which filter what a search finds rather than
        # find it (search/access.py); the planner cannot turn them into a join
        self.per_row = False

    def touched(self, rtype: str, alias: str) -> str:
        """ " AND <the caller may reach row alias of rtype>", or "" when it reaches all."""
        if self.access is None:
            return ""
        predicate = self.access(self, rtype, alias)
        return "" if predicate is None else f" AND {predicate}"

    def arg(self, value: object, cast: str = "") -> str:
        self.args.append(value)
        return f"${len(self.args)}{cast}"

    def alias(self, stem: str = "x") -> str:
        self._aliases += 1
        return f"{stem}{self._aliases}"


def owned(
    b: SqlBuilder, alias: str, rtype: str, table: str, x: str, conditions: list[str], negate: bool = False
) -> str:
    """`alias` owns (or, negated, owns no) row x of table meeting all conditions.

    rtype ANY_TYPE (a type-less system search) matches owners of every type.
    """
    if b.per_row and rtype != ANY_TYPE:
        conds = [f"{x}.resource_type = {b.arg(rtype)}", f"{x}.resource_id = {alias}.id", *conditions]
        probe = f"EXISTS (SELECT 1 FROM {table} {x} WHERE {' AND '.join(conds)} OFFSET 0)"
        return f"NOT {probe}" if negate else probe
    if rtype == ANY_TYPE:
        head, cols, conds = f"({alias}.resource_type, {alias}.id)", f"{x}.resource_type, {x}.resource_id", conditions
    else:
        head, cols = f"{alias}.id", f"{x}.resource_id"
        conds = [f"{x}.resource_type = {b.arg(rtype)}", *conditions]
    where = " AND ".join(conds) if conds else "true"
    return f"{head} {'NOT IN' if negate else 'IN'} (SELECT {cols} FROM {table} {x} WHERE {where})"


def clause_sql(b: SqlBuilder, clause: Clause, rtype: str, alias: str) -> str:
    """A predicate on resource row `alias` (of type rtype) for one clause."""
    code = clause.name.split(":", 1)[0].split(".", 1)[0]
    if clause.param is None:
        return _column_clause(b, clause, code, rtype, alias)
    param = clause.param
    if clause.has is not None:
        return _has_sql(b, clause, rtype, alias)
    if clause.chain is not None:
        return _chain_sql(b, clause, rtype, alias)
    if param.type == "reference" and clause.modifier == "identifier":
        return _token_via(b, clause, rtype, alias, f"{param.code}:identifier")
    if param.type == "token" and clause.modifier == "of-type":
        return _of_type(b, clause, rtype, alias)
    table = b.tables[param.type]
    x = b.alias()
    if clause.modifier == "missing":
        is_param = f"{x}.param = {b.arg(param.code)}"
        return owned(b, alias, rtype, table, x, [is_param], negate=clause.values == ["true"])
    negate = param.type == "token" and clause.modifier in ("not", "not-in")
    return owned(b, alias, rtype, table, x, _match_conditions(b, clause, x), negate=negate)


def _match_conditions(b: SqlBuilder, clause: Clause, x: str) -> list[str]:
    """Conditions on index row x: of the clause's parameter, with one of its values."""
    assert clause.param is not None
    ors = [_value_sql(b, clause.param, clause.modifier, value, x) for value in clause.values]
    return [f"{x}.param = {b.arg(clause.param.code)}", "(" + " OR ".join(f"({o})" for o in ors) + ")"]


def driver_sql(b: SqlBuilder, clause: Clause, rtype: str) -> str | None:
    """`SELECT DISTINCT resource_id AS id` of the resources a plain, positive clause
    matches, straight from its index table; None for clauses that cannot drive a query
    (chains, _has, :missing, :not, column parameters, type-less searches)."""
    param = clause.param
    if (
        param is None
        or b.tables is not TABLES
        or rtype == ANY_TYPE
        or clause.has is not None
        or clause.chain is not None
        or clause.modifier in ("missing", "not", "not-in", "identifier", "of-type")
    ):
        return None
    x = b.alias()
    conditions = [f"{x}.resource_type = {b.arg(rtype)}", *_match_conditions(b, clause, x)]
    return f"SELECT DISTINCT {x}.resource_id AS id FROM {TABLES[param.type]} {x} WHERE {' AND '.join(conditions)}"


def _column_clause(b: SqlBuilder, clause: Clause, code: str, rtype: str, alias: str) -> str:
    if code == "_id":
        if clause.modifier == "missing":
            return "false" if clause.values == ["true"] else "true"
        ids = [unescape(v) for v in clause.values]
        cond = f"{alias}.id = ANY({b.arg(ids)}::text[])"
        return f"NOT ({cond})" if clause.modifier == "not" else cond
    if code == "_lastUpdated":
        ors = [
            _date_compare(b, *split_prefix(v), f"{alias}.last_updated", f"{alias}.last_updated") for v in clause.values
        ]
        return "(" + " OR ".join(ors) + ")"
    if code in ("_text", "_content"):
        column = "narrative" if code == "_text" else "content"
        x = b.alias()
        ors = " OR ".join(
            f"{x}.{column} @@ websearch_to_tsquery('simple', {b.arg(unescape(v))})" for v in clause.values
        )
        return owned(b, alias, rtype, "search_text", x, [f"({ors})"])
    if code == "_list":
        x = b.alias()
        lists = [unescape(v) for v in clause.values]
        head = f"({alias}.resource_type, {alias}.id)" if rtype == ANY_TYPE else f"{alias}.id"
        cols = f"{x}.target_type, {x}.target_id" if rtype == ANY_TYPE else f"{x}.target_id"
        of_type = "" if rtype == ANY_TYPE else f" AND {x}.target_type = {b.arg(rtype)}"
        visible = ""
        if b.access is not None:  # only lists the caller may see name members
            lr = b.alias("r")
            visible = (
                f" AND {x}.resource_id IN (SELECT {lr}.id FROM resource {lr}"
                f" WHERE {lr}.resource_type = 'List' AND NOT {lr}.deleted{b.touched('List', lr)})"
            )
        return (
            f"{head} IN (SELECT {cols} FROM search_reference {x}"
            f" WHERE {x}.resource_type = 'List' AND {x}.resource_id = ANY({b.arg(lists)}::text[])"
            f" AND {x}.param = 'item'{of_type}{visible})"
        )
    raise FhirError.of(400, "not-supported", f"unsupported parameter '{code}'")


def _chain_sql(b: SqlBuilder, clause: Clause, rtype: str, alias: str) -> str:
    assert clause.chain is not None and clause.param is not None
    x = b.alias()
    ors = []
    refused: FhirError | None = None
    for target, inner in clause.chain.items():
        r2 = b.alias("r")
        try:
            visible = b.touched(target, r2)
        except FhirError as exc:  # a target type the caller may not search: matches nothing
            refused = exc
            continue
        inner_sql = clause_sql(b, inner, target, r2)
        ors.append(
            f"({x}.target_type = {b.arg(target)} AND {x}.target_id IN (SELECT {r2}.id FROM resource {r2}"
            f" WHERE {r2}.resource_type = {b.arg(target)} AND NOT {r2}.deleted AND {inner_sql}{visible}))"
        )
    if not ors:
        assert refused is not None
        raise refused  # no target the caller may search: 403
    conditions = [f"{x}.param = {b.arg(clause.param.code)}", "(" + " OR ".join(ors) + ")"]
    return owned(b, alias, rtype, "search_reference", x, conditions)


def _has_sql(b: SqlBuilder, clause: Clause, rtype: str, alias: str) -> str:
    assert clause.has is not None and clause.has_type is not None and clause.param is not None
    x, r2 = b.alias(), b.alias("r")
    visible = b.touched(clause.has_type, r2)  # 403 when the caller may not search has_type
    inner_sql = clause_sql(b, clause.has, clause.has_type, r2) + visible
    head = f"({alias}.resource_type, {alias}.id)" if rtype == ANY_TYPE else f"{alias}.id"
    cols = f"{x}.target_type, {x}.target_id" if rtype == ANY_TYPE else f"{x}.target_id"
    of_type = "" if rtype == ANY_TYPE else f" AND {x}.target_type = {b.arg(rtype)}"
    return (
        f"{head} IN (SELECT {cols} FROM search_reference {x}"
        f" WHERE {x}.resource_type = {b.arg(clause.has_type)} AND {x}.param = {b.arg(clause.param.code)}"
        f"{of_type} AND {x}.resource_id IN (SELECT {r2}.id FROM resource {r2}"
        f" WHERE {r2}.resource_type = {b.arg(clause.has_type)} AND NOT {r2}.deleted AND {inner_sql}))"
    )


def _token_via(b: SqlBuilder, clause: Clause, rtype: str, alias: str, param_code: str) -> str:
    x = b.alias()
    ors = " OR ".join(f"({_token_sql(b, v, x)})" for v in clause.values)
    return owned(b, alias, rtype, b.tables["token"], x, [f"{x}.param = {b.arg(param_code)}", f"({ors})"])


def _of_type(b: SqlBuilder, clause: Clause, rtype: str, alias: str) -> str:
    """identifier:of-type=typesystem|typecode|value, indexed as system=typesystem,
    code=typecode|value under the parameter `<code>:of-type`."""
    assert clause.param is not None
    x = b.alias()
    ors = []
    for value in clause.values:
        parts = split_unescaped(value, "|")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise FhirError.of(400, "invalid", f"'{clause.name}' takes system|code|value, got '{value}'")
        system, code, ident = (unescape(p) for p in parts)
        cond = f"{x}.code = {b.arg(code + '|' + ident)}"
        if system:
            cond += f" AND {x}.system = {b.arg(system)}"
        ors.append(f"({cond})")
    conditions = [f"{x}.param = {b.arg(clause.param.code + ':of-type')}", "(" + " OR ".join(ors) + ")"]
    return owned(b, alias, rtype, b.tables["token"], x, conditions)


# -- per-type value predicates over index row alias x ----------------------------------


def _value_sql(b: SqlBuilder, param: SearchParam, modifier: str | None, value: str, x: str) -> str:
    kind = param.type
    if kind == "token":
        if modifier == "text":
            return f"{x}.text LIKE {b.arg(escape_like(normalize_string(unescape(value))) + '%')}"
        if modifier in ("in", "not-in", "above", "below"):
            return _terminology_sql(b, param, modifier, value, x)
        return _token_sql(b, value, x)
    if kind == "string":
        return _string_sql(b, modifier, unescape(value), f"{x}.value", f"{x}.exact")
    if kind == "uri":
        return _uri_sql(b, param, modifier, value, x)
    if kind == "date":
        prefix, rest = split_prefix(value)
        return _date_compare(b, prefix, rest, f"{x}.low", f"{x}.high")
    if kind == "number":
        prefix, rest = split_prefix(value)
        return _number_compare(b, prefix, Decimal(rest), f"{x}.value")
    if kind == "quantity":
        return _quantity_sql(b, value, x)
    if kind == "reference":
        return _reference_sql(b, param, modifier, value, x)
    if kind == "composite":
        return _composite_sql(b, param, value, x)
    if kind == "special":
        return _near_sql(b, param, value, x)
    raise FhirError.of(400, "not-supported", f"parameter type {kind} is not supported")


def _token_sql(b: SqlBuilder, value: str, x: str) -> str:
    return _token_match(b, value, f"{x}.system", f"{x}.code")


def _token_match(b: SqlBuilder, value: str, system_col: str, code_col: str) -> str:
    """`code`, `system|code`, `|code` (no system) or `system|` (any code)."""
    parts = split_unescaped(value, "|")
    if len(parts) == 1:
        return f"{code_col} = {b.arg(unescape(parts[0]))}"
    system, code = unescape(parts[0]), unescape("|".join(parts[1:]))
    conds = []
    if code:
        conds.append(f"{code_col} = {b.arg(code)}")
    conds.append(f"{system_col} = {b.arg(system)}" if system else f"{system_col} IS NULL")
    return " AND ".join(conds)


def _terminology_sql(b: SqlBuilder, param: SearchParam, modifier: str, value: str, x: str) -> str:
    """Codes of a value set (`:in`; `:not-in` negates the clause) or of a subsumption
    closure (`:above`/`:below`), bound as arrays, never one parameter per code. Rows
    without a system (codes of a non-required binding) match on the code alone."""
    if modifier in ("in", "not-in"):
        found = value_set_codes(param.code, unescape(value))
        by_system: dict[str, list[str]] = {}
        for system, code in sorted(found.pairs):
            by_system.setdefault(system, []).append(code)
        # one index-probing arm per code system (value sets draw on few), one for bare codes
        arms = [
            f"({x}.system = {b.arg(system)} AND {x}.code = ANY({b.arg(codes, '::text[]')}))"
            for system, codes in by_system.items()
        ]
        arms.append(f"({x}.system IS NULL AND {x}.code = ANY({b.arg(sorted(found.codes), '::text[]')}))")
        return "(" + " OR ".join(arms) + ")"
    system, code = (unescape(p) for p in split_unescaped(value, "|"))
    closure = subsumed_codes(param.code, system, code, upwards=modifier == "above")
    return f"{x}.system = {b.arg(system)} AND {x}.code = ANY({b.arg(closure, '::text[]')})"


def _string_sql(b: SqlBuilder, modifier: str | None, value: str, norm_col: str, exact_col: str) -> str:
    if modifier == "exact":
        return f"{exact_col} = {b.arg(value)}"
    pattern = escape_like(normalize_string(value))
    if modifier == "contains":
        return f"{norm_col} LIKE {b.arg('%' + pattern + '%')}"
    return f"{norm_col} LIKE {b.arg(pattern + '%')}"


def url_ancestors(url: str) -> list[str]:
    """url and every URL above it, cut at path segments (R4 `:above`):
    `http://a.org/fhir/ValueSet/1` gives `http://a.org`, `http://a.org/fhir`, ... and
    each with a trailing slash. A URN or OID has no hierarchy: only itself."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return [url]
    segments = rest.rstrip("/").split("/")
    out = [url]
    for i in range(1, len(segments) + 1):
        prefix = f"{scheme}://{'/'.join(segments[:i])}"
        out += [prefix, prefix + "/"]
    return list(dict.fromkeys(out))


def _url_below(b: SqlBuilder, url: str, col: str) -> str:
    """col is url or a URL under it (path-segment wise: `/ValueSet` is not above `/ValueSets`)."""
    if "://" not in url:
        return f"{col} = {b.arg(url)}"
    stem = url.rstrip("/")
    return f"({col} = ANY({b.arg([url, stem], '::text[]')}) OR {col} LIKE {b.arg(escape_like(stem) + '/%')})"


def _version_sql(b: SqlBuilder, modifier: str | None, version: str, col: str, prefix: str = "") -> str:
    """A canonical version test on col (values `prefix + version`): exact, `:below`
    (`1` matches 1, 1.2 and 1.2.3 but not 10) or `:above` (`1.2.3` matches 1, 1.2, 1.2.3)."""
    if modifier == "below":
        return f"({col} = {b.arg(prefix + version)} OR {col} LIKE {b.arg(escape_like(prefix + version) + '.%')})"
    if modifier == "above":
        parts = version.split(".")
        above = [prefix + ".".join(parts[: i + 1]) for i in range(len(parts))]
        return f"{col} = ANY({b.arg(above, '::text[]')})"
    return f"{col} = {b.arg(prefix + version)}"


def split_canonical(raw: str) -> tuple[str, str | None]:
    """(url, version) of a search value `url|version` (escapes removed)."""
    parts = split_unescaped(raw, "|")
    if len(parts) == 1:
        return unescape(raw), None
    return unescape(parts[0]), unescape("|".join(parts[1:]))


def _uri_sql(b: SqlBuilder, param: SearchParam, modifier: str | None, raw: str, x: str) -> str:
    """uri parameters, R4 `:above`/`:below` by path segment; `url|version` matches a
    stored canonical `url|version`, or the url of a resource whose `version` matches."""
    col = f"{x}.uri"
    if modifier == "exact":
        return f"{col} = {b.arg(unescape(raw))}"
    url, version = split_canonical(raw)
    if version is None:
        if modifier == "below":
            stem = url.rstrip("/")
            return f"({_url_below(b, url, col)} OR {col} LIKE {b.arg(escape_like(stem) + '|%')})"
        if modifier == "above":
            return f"{col} = ANY({b.arg(url_ancestors(url), '::text[]')})"
        return f"({col} = {b.arg(url)} OR {col} LIKE {b.arg(escape_like(url) + '|%')})"
    ors = [_version_sql(b, modifier, version, col, prefix=url + "|")]
    owner_version = search_params(param.resource_type).get("version")
    if owner_version is not None and owner_version.type == "token":
        v = b.alias("v")
        ors.append(
            f"({col} = {b.arg(url)} AND EXISTS (SELECT 1 FROM {b.tables['token']} {v} WHERE {v}.resource_type ="
            f" {x}.resource_type AND {v}.resource_id = {x}.resource_id AND {v}.param = 'version'"
            f" AND {_version_sql(b, modifier, version, f'{v}.code')}))"
        )
    return "(" + " OR ".join(ors) + ")"


def _canonical_sql(b: SqlBuilder, modifier: str, raw: str, x: str) -> str:
    """`:above`/`:below` on a reference parameter: canonical URLs (kept in url, the
    version in target_version), by URL hierarchy or, with `|version`, by version."""
    url, version = split_canonical(raw)
    if version is not None:
        return f"{x}.url = {b.arg(url)} AND {_version_sql(b, modifier, version, f'{x}.target_version')}"
    if modifier == "below":
        return _url_below(b, url, f"{x}.url")
    return f"{x}.url = ANY({b.arg(url_ancestors(url), '::text[]')})"


def _date_compare(b: SqlBuilder, prefix: str, value: str, low: str, high: str) -> str:
    """R4 date prefixes over the target range [low, high] and the search range [sl, sh]."""
    sl_v, sh_v = date_range(value.replace(" ", "+"))

    def sl() -> str:  # bound only where used: an unused parameter has no type
        return b.arg(sl_v, "::timestamptz")

    def sh() -> str:
        return b.arg(sh_v, "::timestamptz")

    def eq() -> str:
        return f"({low} >= {sl()} AND {high} <= {sh()})"

    if prefix == "eq":
        return eq()
    if prefix == "ne":
        return f"NOT {eq()}"
    if prefix == "gt":
        return f"{high} > {sh()}"
    if prefix == "lt":
        return f"{low} < {sl()}"
    if prefix == "ge":
        return f"({high} > {sh()} OR {eq()})"
    if prefix == "le":
        return f"({low} < {sl()} OR {eq()})"
    if prefix == "sa":
        return f"{low} > {sh()}"
    if prefix == "eb":
        return f"{high} < {sl()}"
    # ap: overlap with the search range widened by 10% of its distance from now
    gap = max(abs(datetime.now(sl_v.tzinfo) - sl_v) * 0.1, timedelta(days=1))
    try:
        wide_low, wide_high = sl_v - gap, sh_v + gap
    except OverflowError:
        wide_low, wide_high = MIN_INSTANT, MAX_INSTANT
    start = b.arg(max(wide_low, MIN_INSTANT), "::timestamptz")
    end = b.arg(min(wide_high, MAX_INSTANT), "::timestamptz")
    return f"({high} >= {start} AND {low} <= {end})"


def _number_compare(b: SqlBuilder, prefix: str, number: Decimal, col: str) -> str:
    value, low, high = number_range(number)
    if prefix in ("eq", "ne"):
        cond = f"({col} >= {b.arg(low, '::numeric')} AND {col} < {b.arg(high, '::numeric')})"
        return cond if prefix == "eq" else f"NOT {cond}"
    op = {"gt": ">", "sa": ">", "lt": "<", "eb": "<", "ge": ">=", "le": "<="}.get(prefix)
    if op is not None:
        return f"{col} {op} {b.arg(value, '::numeric')}"
    margin = abs(value) * Decimal("0.1")
    return f"{col} BETWEEN {b.arg(value - margin, '::numeric')} AND {b.arg(value + margin, '::numeric')}"


def _quantity_sql(b: SqlBuilder, raw: str, x: str) -> str:
    prefix, rest = split_prefix(raw)
    parts = [unescape(p) for p in split_unescaped(rest, "|")]
    if len(parts) not in (1, 3):
        raise FhirError.of(400, "invalid", f"quantity '{raw}' must be number or number|system|code")
    number = Decimal(parts[0])
    if len(parts) == 1:
        return _number_compare(b, prefix, number, f"{x}.value")
    system, code = parts[1], parts[2]
    if system == UCUM and code:
        canon = ucum_canonical(number, code)
        if canon is not None:
            value, canon_code = canon
            return f"{x}.canon_code = {b.arg(canon_code)} AND " + _number_compare(b, prefix, value, f"{x}.canon_value")
    conds = [_number_compare(b, prefix, number, f"{x}.value")]
    if code:
        conds.append(f"({x}.code = {b.arg(code)} OR {x}.unit = {b.arg(code)})")
    if system:
        conds.append(f"{x}.system = {b.arg(system)}")
    return " AND ".join(conds)


def _reference_sql(b: SqlBuilder, param: SearchParam, modifier: str | None, raw: str, x: str) -> str:
    if modifier in ("above", "below"):
        return _canonical_sql(b, modifier, raw, x)
    value = unescape(raw)
    if modifier and modifier not in ("identifier",):  # :[type], with an id or `Type/id`
        rid = value.partition("/")[2] if value.startswith(modifier + "/") else value
        return f"{x}.target_type = {b.arg(modifier)} AND {x}.target_id = {b.arg(rid)}"
    if "|" in value and "/" in value.split("|", 1)[0] and "://" in value:  # canonical|version
        url, version = value.split("|", 1)
        return f"{x}.url = {b.arg(url)} AND {x}.target_version = {b.arg(version)}"
    if "://" in value or value.startswith(("urn:", "#")):
        # an absolute URL on our base was made relative by the parser; any other is
        # another server's (or a logical/contained one): matched by its text only
        return f"{x}.url = {b.arg(value)}"
    segments = value.split("/")
    if len(segments) == 1:
        return f"{x}.target_id = {b.arg(value)}"
    if len(segments) == 2:
        return f"{x}.target_type = {b.arg(segments[0])} AND {x}.target_id = {b.arg(segments[1])}"
    if len(segments) == 4 and segments[2] == "_history":
        return (
            f"{x}.target_type = {b.arg(segments[0])} AND {x}.target_id = {b.arg(segments[1])}"
            f" AND {x}.target_version = {b.arg(segments[3])}"
        )
    raise FhirError.of(400, "invalid", f"'{param.code}': '{raw}' is not a reference")


def _near_sql(b: SqlBuilder, param: SearchParam, raw: str, x: str) -> str:
    """Positions within a great-circle distance: the circle's bounding box first (an
    index range on latitude, then longitude, wrapping at the antimeridian and open at
    the poles), then the haversine distance."""
    lat, lon, km = parse_near(param.code, raw)
    angle = km / EARTH_RADIUS_KM  # radians of arc
    dlat = math.degrees(angle)
    conds = [f"{x}.latitude BETWEEN {b.arg(lat - dlat, '::float8')} AND {b.arg(lat + dlat, '::float8')}"]
    cos_lat = math.cos(math.radians(lat))
    if lat - dlat > -90.0 and lat + dlat < 90.0 and angle < math.pi / 2 and cos_lat > 0:
        dlon = math.degrees(math.asin(min(1.0, math.sin(angle) / cos_lat)))
        low, high = lon - dlon, lon + dlon
        if low >= -180.0 and high <= 180.0:
            conds.append(f"{x}.longitude BETWEEN {b.arg(low, '::float8')} AND {b.arg(high, '::float8')}")
        elif dlon < 180.0:  # across the antimeridian: two ranges
            low, high = (low + 360.0, high) if low < -180.0 else (low, high - 360.0)
            conds.append(f"({x}.longitude >= {b.arg(low, '::float8')} OR {x}.longitude <= {b.arg(high, '::float8')})")
    p_lat, p_lon = b.arg(lat, "::float8"), b.arg(lon, "::float8")
    haversine = (
        f"power(sin(radians({x}.latitude - {p_lat}) / 2), 2) + cos(radians({p_lat})) * cos(radians({x}.latitude))"
        f" * power(sin(radians({x}.longitude - {p_lon}) / 2), 2)"
    )
    conds.append(f"2 * {EARTH_RADIUS_KM} * asin(sqrt(least(1.0, {haversine}))) <= {b.arg(km, '::float8')}")
    return " AND ".join(conds)


def _composite_sql(b: SqlBuilder, param: SearchParam, raw: str, x: str) -> str:
    parts = split_unescaped(raw, "$")
    conds = []
    for i, (kind, part) in enumerate(zip(component_types(param), parts, strict=True)):
        item = f"({x}.components->{i})"
        if kind == "token":
            conds.append(_token_match(b, part, f"{item}->>'system'", f"{item}->>'code'"))
        elif kind in ("quantity", "number"):
            prefix, rest = split_prefix(part)
            pieces = [unescape(p) for p in split_unescaped(rest, "|")]
            cond = _number_compare(b, prefix, Decimal(pieces[0]), f"({item}->>'value')::numeric")
            if len(pieces) == 3 and pieces[2]:
                cond += f" AND {item}->>'code' = {b.arg(pieces[2])}"
            conds.append(cond)
        elif kind == "date":
            prefix, rest = split_prefix(part)
            conds.append(
                _date_compare(
                    b,
                    prefix,
                    rest,
                    f"({item}->>'low')::timestamptz",
                    f"({item}->>'high')::timestamptz",
                )
            )
        elif kind == "string":
            conds.append(_string_sql(b, None, unescape(part), f"{item}->>'value'", f"{item}->>'value'"))
        elif kind == "reference":
            segs = unescape(part).split("/")
            cond = f"{item}->>'id' = {b.arg(segs[-1])}"
            if len(segs) == 2:
                cond += f" AND {item}->>'type' = {b.arg(segs[0])}"
            conds.append(cond)
        else:
            raise FhirError.of(400, "not-supported", f"composite component type {kind} is not supported")
    return " AND ".join(f"({c})" for c in conds)
