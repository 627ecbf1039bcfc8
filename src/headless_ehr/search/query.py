"""Parse search parameters and compile them to parameterised SQL.

Values never reach SQL as text: every value is a bind parameter. This first slice
knows `_id` and token parameters; the full search API builds on the same shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..fhir.outcome import FhirError, Issue
from .registry import indexed_token_params

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
        "_format",
        "_pretty",
        "_contained",
        "_containedType",
    }
)
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def split_or(value: str) -> list[str]:
    """Split a parameter value on unescaped commas, unescaping `\\,` `\\|` `\\$` `\\\\`."""
    parts, cur, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            cur.append(value[i : i + 2])
            i += 2
            continue
        if ch == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _split_token(value: str) -> tuple[str | None, str | None, bool]:
    """(system, code, system_given) of a token value `[system|]code`."""
    idx, i = -1, 0
    while i < len(value):
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == "|":
            idx = i
            break
        i += 1
    unescape = lambda s: re.sub(r"\\(.)", r"\1", s)  # noqa: E731
    if idx < 0:
        return None, unescape(value) or None, False
    return unescape(value[:idx]) or None, unescape(value[idx + 1 :]) or None, True


@dataclass
class SearchQuery:
    """A compiled search: SQL WHERE fragments over alias `r` plus their arguments."""

    resource_type: str
    where: list[str] = field(default_factory=list)
    args: list[object] = field(default_factory=list)
    count: int | None = None
    issues: list[Issue] = field(default_factory=list)

    def arg(self, value: object) -> str:
        self.args.append(value)
        return f"${len(self.args)}"


def compile_search(
    resource_type: str,
    params: list[tuple[str, str]],
    *,
    strict: bool,
    max_count: int = 1000,
) -> SearchQuery:
    """Compile (name, value) pairs; unknown parameters fail (strict) or are reported."""
    query = SearchQuery(resource_type)
    query.arg(resource_type)
    tokens = {p.code: p for p in indexed_token_params(resource_type)}
    for name, value in params:
        base, _, modifier = name.partition(":")
        if base == "_count":
            try:
                count = int(value)
            except ValueError:
                raise FhirError.of(
                    400, "invalid", f"_count must be an integer, got '{value}'"
                ) from None
            if count < 0:
                raise FhirError.of(400, "invalid", "_count must not be negative")
            query.count = min(count, max_count)
        elif base in RESULT_PARAMETERS:
            continue
        elif base == "_id" and not modifier:
            ids = split_or(value)
            if not all(_ID.match(i) for i in ids):
                raise FhirError.of(400, "invalid", f"invalid _id value '{value}'")
            query.where.append(f"r.id = ANY({query.arg(ids)}::text[])")
        elif base in tokens and not modifier:
            ors = []
            for part in split_or(value):
                system, code, system_given = _split_token(part)
                conds = [f"t.param = {query.arg(base)}"]
                if code is not None:
                    conds.append(f"t.code = {query.arg(code)}")
                if system_given:
                    conds.append(
                        f"t.system = {query.arg(system)}" if system else "t.system IS NULL"
                    )
                ors.append("(" + " AND ".join(conds) + ")")
            query.where.append(
                "r.id IN (SELECT t.resource_id FROM search_token t"
                " WHERE t.resource_type = $1 AND (" + " OR ".join(ors) + "))"
            )
        else:
            message = f"unknown or unsupported search parameter '{name}' for {resource_type}"
            if strict:
                raise FhirError.of(400, "not-supported", message)
            query.issues.append(Issue("warning", "not-supported", message))
    return query
