"""An export's rows as SQL: each resource as of the job's transactionTime, within reach.

The snapshot: for every resource of a type, the latest version whose last_updated is
below T (the write watermark at kick-off, migration 0009: no version below it can
still commit later), unless that version is a deletion. Most rows have not changed
since T and are read from `resource` as they are; a row changed since is looked up in
`resource_history` (its latest version below T; none when it was created after T).
Writes during the export therefore never show in it.

Which rows a caller reaches is the search layer's rule (search/access.py: scopes,
patient compartment, access policies, Consents), the same predicate a search of the
type would join, and _typeFilter queries compile with the search compiler. Like
history, these judge a resource by its current index rows (docs/security.md, the
current-state rule): a resource changed after T is filtered as it is now.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import parse_qsl

from ..auth.policies import guard_search
from ..auth.principal import Principal
from ..fhir.outcome import FhirError
from ..search.access import touched_access, type_access_sql
from ..search.compartment import Compartment, compartment_sql
from ..search.parse import RESULT_PARAMETERS, ChainBudget, Parser
from ..search.sql import SqlBuilder, clause_sql
from .export_jobs import ExportSpec


def type_filter_pairs(query: str) -> list[tuple[str, str]]:
    """A _typeFilter query's search parameters; 400 for result parameters (_count, _sort…)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    shaping = sorted({n for n, _ in pairs if n.split(":", 1)[0].split(".", 1)[0] in RESULT_PARAMETERS})
    if shaping:
        raise FhirError.of(400, "invalid", f"_typeFilter may only hold search parameters, not {', '.join(shaping)}")
    if not pairs:
        raise FhirError.of(400, "invalid", f"_typeFilter '{query[:200]}' holds no search parameter")
    return pairs


def check_type_filter(principal: Principal, rtype: str, query: str, local_base: str | None) -> None:
    """400 for a _typeFilter a strict search of rtype would refuse; 403 for one matching
    on an element the caller's access policy hides (as a search would be)."""
    clauses = Parser(rtype, strict=True, budget=ChainBudget(), local_base=local_base).parse(type_filter_pairs(query))
    guard_search(principal, {rtype: clauses})


def _filters_sql(b: SqlBuilder, rtype: str, queries: list[str], alias: str, local_base: str | None) -> str | None:
    """Predicate: row alias matches any of the type's _typeFilter queries (each an AND of its clauses)."""
    if not queries:
        return None
    ors = []
    for query in queries:
        clauses = Parser(rtype, strict=True, budget=ChainBudget(), local_base=local_base).parse(
            type_filter_pairs(query)
        )
        ors.append("(" + " AND ".join(clause_sql(b, c, rtype, alias) for c in clauses) + ")" if clauses else "true")
    return "(" + " OR ".join(ors) + ")"


def _as_of(b: SqlBuilder, alias: str, at: str) -> str:
    """A LATERAL subquery (content, at) of row alias's latest version below instant `at`
    (an argument): the row itself when unchanged since, else from history; no row, or a
    NULL content (a deletion), when there is none to export."""
    return (
        f"(SELECT {alias}.content AS content, {alias}.last_updated AS at WHERE {alias}.last_updated < {at}"
        " UNION ALL"
        " (SELECT h.content, h.last_updated FROM resource_history h"
        f" WHERE {alias}.last_updated >= {at} AND h.resource_type = {alias}.resource_type AND h.id = {alias}.id"
        f" AND h.last_updated < {at} ORDER BY h.version_id DESC LIMIT 1))"
    )


def _conditions(
    b: SqlBuilder, principal: Principal, spec: ExportSpec, rtype: str, alias: str, version: str, local_base: str | None
) -> list[str]:
    """What a row alias of rtype (its version as of the snapshot at alias `version`) must
    meet to be exported: _since, the level's compartment, _typeFilter, the caller's reach."""
    conds = [f"{version}.content IS NOT NULL"]
    if spec.since is not None:
        conds.append(f"{version}.at >= {b.arg(datetime.fromisoformat(spec.since))}")
    if spec.level != "system" or spec.patients is not None:
        patients = None if spec.patients is None else tuple(spec.patients)
        conds.append(compartment_sql(b, Compartment("Patient", patients), rtype, alias))
    filters = _filters_sql(b, rtype, spec.type_filters.get(rtype, []), alias, local_base)
    if filters is not None:
        conds.append(filters)
    access = type_access_sql(b, principal, "search", rtype, alias, local_base)
    if access is not None:
        conds.append(access)
    return conds


def page_sql(
    principal: Principal,
    spec: ExportSpec,
    rtype: str,
    at: datetime,
    after: str,
    limit: int,
    local_base: str | None,
) -> tuple[str, list[object]]:
    """SELECT id, content of the next limit resources of rtype after id `after` (id order)
    as of instant at, within the caller's reach and the export's filters."""
    b = SqlBuilder()
    b.access = touched_access(principal, local_base)  # chains and _has of _typeFilter: the caller's reach
    t = b.arg(at)
    conds = [f"r.resource_type = {b.arg(rtype)}", f"r.id > {b.arg(after)}"]
    conds += _conditions(b, principal, spec, rtype, "r", "v", local_base)
    statement = (
        f"SELECT r.id, v.content FROM resource r CROSS JOIN LATERAL {_as_of(b, 'r', t)} v"
        f" WHERE {' AND '.join(conds)} ORDER BY r.id LIMIT {int(limit)}"
    )
    return statement, b.args


def provenance_sql(
    principal: Principal,
    spec: ExportSpec,
    at: datetime,
    after: str,
    limit: int,
    local_base: str | None,
) -> tuple[str, list[object]]:
    """SELECT id, content of the next limit Provenances after id `after` that are, as of
    instant at, the latest (by meta.lastUpdated, then id) of the Provenances the caller
    reaches that target some resource this export holds (includeAssociatedData=
    LatestProvenanceResources). A resource is held when it meets its type's export
    conditions (_conditions): the same predicate its own stream used."""
    b = SqlBuilder()
    b.access = touched_access(principal, local_base)
    t = b.arg(at)
    mine = type_access_sql(b, principal, "search", "Provenance", "r", local_base)
    held = []
    for rtype in spec.types:
        if rtype == "Provenance":
            continue
        conds = [f"o.resource_type = {b.arg(rtype)}", "o.id = x.target_id"]
        conds += _conditions(b, principal, spec, rtype, "o", "ov", local_base)
        held.append(
            f"(x.target_type = {b.arg(rtype)} AND EXISTS (SELECT 1 FROM resource o"
            f" CROSS JOIN LATERAL {_as_of(b, 'o', t)} ov WHERE {' AND '.join(conds)}))"
        )
    if not held:
        return "SELECT NULL::text, NULL::bytea WHERE false", b.args
    rival = type_access_sql(b, principal, "search", "Provenance", "p", local_base)
    later = (
        "NOT EXISTS (SELECT 1 FROM search_reference y JOIN resource p"
        " ON p.resource_type = 'Provenance' AND p.id = y.resource_id"
        " WHERE y.resource_type = 'Provenance' AND y.param = 'target'"
        " AND y.target_type = x.target_type AND y.target_id = x.target_id AND p.id <> r.id"
        f" AND NOT p.deleted AND p.last_updated < {t} AND (p.last_updated, p.id) > (v.at, r.id)"
        + (f" AND {rival}" if rival is not None else "")
        + ")"
    )
    conds = ["r.resource_type = 'Provenance'", f"r.id > {b.arg(after)}", "v.content IS NOT NULL"]
    if mine is not None:
        conds.append(mine)
    conds.append(
        "EXISTS (SELECT 1 FROM search_reference x WHERE x.resource_type = 'Provenance' AND x.resource_id = r.id"
        f" AND x.param = 'target' AND ({' OR '.join(held)}) AND {later})"
    )
    statement = (
        f"SELECT r.id, v.content FROM resource r CROSS JOIN LATERAL {_as_of(b, 'r', t)} v"
        f" WHERE {' AND '.join(conds)} ORDER BY r.id LIMIT {int(limit)}"
    )
    return statement, b.args


def lists_deleted(principal: Principal, spec: ExportSpec, rtype: str) -> bool:
    """Whether an export lists rtype's deletions (manifest `deleted`): for _since exports
    at system level by a caller who reaches every row of the type, with no _typeFilter
    on it. A deleted resource has no index rows, so neither a compartment, nor scope
    criteria, nor a filter can be judged on it: those exports list no deletions."""
    if spec.since is None or spec.level != "system" or spec.patients is not None or spec.type_filters.get(rtype):
        return False
    return principal.access("search", rtype) is None


def deleted_sql(spec: ExportSpec, rtype: str, at: datetime, after: str, limit: int) -> tuple[str, list[object]]:
    """SELECT id of the next limit resources of rtype after id `after` whose latest version
    below instant at is a deletion made at or after _since."""
    assert spec.since is not None
    statement = (
        "SELECT d.id FROM (SELECT DISTINCT ON (h.id) h.id, h.method FROM resource_history h"
        " WHERE h.resource_type = $1 AND h.last_updated >= $2 AND h.last_updated < $3 AND h.id > $4"
        " ORDER BY h.id, h.version_id DESC) d"
        f" WHERE d.method = 'DELETE' ORDER BY d.id LIMIT {int(limit)}"
    )
    return statement, [rtype, datetime.fromisoformat(spec.since), at, after]
