"""A principal's access as SQL: the predicate that joins every query the store builds.

`Principal.access(interaction, type)` says which rows of a type a caller reaches:
all (None) or those matching any of its Scopes. Each Scope is "in Patient/<id>'s
compartment" (search/compartment.py) and "matches the v2 scope criteria", the
criteria compiled by the search compiler exactly as the same search would be, over
the same alias. Searches, includes, chains, `_has`, `_list`, history, reads and
the check of a write's own new row all use this one rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import lru_cache

from ..auth.principal import Principal, Scope, in_patient_compartment, patient_reference_params
from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError
from .compartment import Compartment, compartment_params, compartment_sql
from .consent import consent_sql
from .parse import ChainBudget, Clause, Parser
from .registry import BUNDLE_PATIENT, SECURITY_CONTEXT
from .sql import ANY_TYPE, SqlBuilder, clause_sql, driver_sql

# (builder, resource type, alias) -> predicate on alias, or None for every row
AccessSql = Callable[[SqlBuilder, str, str], str | None]


@lru_cache(maxsize=256)
def _criteria_clauses(rtype: str, criteria: tuple[tuple[str, str], ...], local_base: str | None) -> tuple[Clause, ...]:
    """A scope's criteria parsed as a strict search of rtype would parse them (400 never:
    criteria a search refuses match nothing, so the scope opens nothing)."""
    parser = Parser(rtype, strict=True, budget=ChainBudget(64), local_base=local_base)
    return tuple(parser.parse(list(criteria)))


def _scope_sql(b: SqlBuilder, scope: Scope, rtype: str, alias: str, local_base: str | None) -> str:
    conds = []
    if scope.patient is not None:
        if in_patient_compartment(rtype):
            conds.append(compartment_sql(b, Compartment("Patient", scope.patient), rtype, alias))
            if scope.exclusive:
                params = compartment_params("Patient").get(rtype, ())
                conds.append(_names_no_other_patient(b, rtype, alias, scope.patient, params))
        elif rtype == "Binary":
            conds.append(_context_names_no_other_patient(b, alias, scope.patient))
        elif rtype == "Bundle":
            conds.append(_names_no_other_patient(b, rtype, alias, scope.patient, (BUNDLE_PATIENT,)))
        else:  # a type outside the compartment definition that may name patients (Task.for)
            conds.append(_names_no_other_patient(b, rtype, alias, scope.patient, patient_reference_params(rtype)))
    if scope.criteria:
        try:
            clauses = _criteria_clauses(rtype, scope.criteria, local_base)
        except FhirError:
            return "false"  # e.g. criteria naming a parameter this type lacks
        # the grant's own criteria are the authority: not restricted again (no recursion);
        # checked per row: they filter what the search finds (sql.py, SqlBuilder.per_row)
        saved, b.access, per_row, b.per_row = b.access, None, b.per_row, True
        try:
            conds += [clause_sql(b, c, rtype, alias) for c in clauses]
        finally:
            b.access, b.per_row = saved, per_row
    if scope.patients is not None:
        conds.append(_patients_compartment_sql(b, scope.patients, rtype, alias, local_base))
    return "(" + " AND ".join(conds) + ")" if conds else "true"


def _patients_compartment_sql(
    b: SqlBuilder, search: tuple[tuple[str, str], ...], rtype: str, alias: str, local_base: str | None
) -> str:
    """Predicate: alias is in the Patient compartment of a live Patient the search finds
    (an access policy's `compartment` rule). Reads only alias.id.

    Checked per row, never joined: the patient search runs once per statement (an
    InitPlan, `= ANY(ARRAY(...))`) and each candidate row probes its own patient
    references (`OFFSET 0` keeps the planner from flattening the EXISTS into a join).
    As a join, the planner underestimates how many rows the patients reach (it cannot
    know the search's patients) and builds the whole reachable id set before the
    search's own clauses narrow anything (docs/security.md, Access policies, Cost)."""
    if not in_patient_compartment(rtype):
        return "false"
    try:
        clauses = _criteria_clauses("Patient", search, local_base)
    except FhirError:
        return "false"
    # the rule's search is the authority, as scope criteria are; it finds the patients
    saved, b.access, per_row, b.per_row = b.access, None, b.per_row, False
    try:
        patients = f"ARRAY({_patient_ids_sql(b, clauses)})"
    finally:
        b.access, b.per_row = saved, per_row
    if rtype == "Patient":
        return f"{alias}.id = ANY({patients})"
    params = compartment_params("Patient").get(rtype, ())
    x = b.alias()
    return (
        f"EXISTS (SELECT 1 FROM search_reference {x}"
        f" WHERE {x}.resource_type = {b.arg(rtype)} AND {x}.resource_id = {alias}.id"
        f" AND {x}.param = ANY({b.arg(list(params))}::text[])"
        f" AND {x}.target_type = 'Patient' AND {x}.target_id = ANY({patients}) OFFSET 0)"
    )


def _patient_ids_sql(b: SqlBuilder, clauses: tuple[Clause, ...]) -> str:
    """SELECT of the ids of the live Patients meeting every clause: from the index of the
    first clause that can drive (deleted resources have no index rows), else from
    `resource`, as query.py's driven page reads them."""
    reads_row = any(c.param is None and c.name.split(":")[0] == "_lastUpdated" for c in clauses)
    for i, clause in enumerate(clauses):
        driver = None if reads_row else driver_sql(b, clause, "Patient")
        if driver is not None:
            conds = [clause_sql(b, c, "Patient", "q") for j, c in enumerate(clauses) if j != i]
            return f"SELECT q.id FROM ({driver}) q" + (f" WHERE {' AND '.join(conds)}" if conds else "")
    p = b.alias("p")
    conds = [f"{p}.resource_type = 'Patient'", f"NOT {p}.deleted"]
    conds += [clause_sql(b, c, "Patient", p) for c in clauses]
    return f"SELECT {p}.id FROM resource {p} WHERE {' AND '.join(conds)}"


def _names_no_other_patient(b: SqlBuilder, rtype: str, alias: str, patient: str, params: tuple[str, ...]) -> str:
    """Predicate: no reference of alias through params points at a Patient other than patient."""
    if not params:
        return "true"
    x = b.alias()
    return (
        f"NOT EXISTS (SELECT 1 FROM search_reference {x} WHERE {x}.resource_type = {b.arg(rtype)}"
        f" AND {x}.resource_id = {alias}.id AND {x}.param = ANY({b.arg(list(params))}::text[])"
        f" AND {x}.target_type = 'Patient' AND {x}.target_id <> {b.arg(patient)})"
    )


def _context_names_no_other_patient(b: SqlBuilder, alias: str, patient: str) -> str:
    """Predicate on a Binary: its securityContext (R4: access to the Binary follows access
    to it) is not another Patient and names no other Patient through any reference."""
    x, y, p = b.alias(), b.alias(), b.arg(patient)
    return (
        f"NOT EXISTS (SELECT 1 FROM search_reference {x} WHERE {x}.resource_type = 'Binary'"
        f" AND {x}.resource_id = {alias}.id AND {x}.param = '{SECURITY_CONTEXT}'"
        f" AND (({x}.target_type = 'Patient' AND {x}.target_id <> {p})"
        f" OR EXISTS (SELECT 1 FROM search_reference {y} WHERE {y}.resource_type = {x}.target_type"
        f" AND {y}.resource_id = {x}.target_id AND {y}.target_type = 'Patient' AND {y}.target_id <> {p})))"
    )


def scopes_sql(b: SqlBuilder, scopes: tuple[Scope, ...], rtype: str, alias: str, local_base: str | None) -> str:
    """Rows of rtype at alias reachable through any of scopes (and, on reads, not denied by
    a Consent: every Scope of one answer carries the same viewer, so it is joined once)."""
    reach = "(" + " OR ".join(_scope_sql(b, s, rtype, alias, local_base) for s in scopes) + ")"
    viewer = scopes[0].consent if scopes else None
    return reach if viewer is None else f"({reach} AND {consent_sql(b, viewer, rtype, alias)})"


def broad_access(principal: Principal, interaction: str, types: Iterable[str]) -> bool:
    """Whether the principal's restriction on these types is by rule alone (access policy
    rules, scope criteria without a patient, Consents), not by a patient's compartment:
    the rows it reaches are not one record's few, so a page is read in the search's own
    order with the restriction checked per row (Restrict.broad in search/query.py)."""
    return all(all(s.patient is None for s in principal.access(interaction, t) or ()) for t in types)


def type_access_sql(
    b: SqlBuilder, principal: Principal, interaction: str, rtype: str, alias: str, local_base: str | None = None
) -> str | None:
    """Predicate: row alias of rtype may be reached with interaction; None for every
    row; 403 when the principal may not perform it on rtype at all."""
    if rtype == ANY_TYPE:
        if principal.reaches_everything(interaction):
            return None
        predicate = any_type_access_sql(b, principal, interaction, alias, local_base)
        if predicate == "false":
            raise FhirError.of(403, "forbidden", f"not permitted to {interaction} any resources")
        return predicate
    scopes = principal.access(interaction, rtype)
    if scopes is None:
        return None
    return scopes_sql(b, scopes, rtype, alias, local_base)


def any_type_access_sql(
    b: SqlBuilder,
    principal: Principal,
    interaction: str,
    alias: str,
    local_base: str | None = None,
    types: Iterable[str] | None = None,
) -> str:
    """Predicate over rows of any type (system search and history), or of any of types
    (what a reference may point at): each type on its own terms; types the principal
    cannot reach at all match nothing ("false" when that is every type)."""
    open_types: list[str] = []
    ors: list[str] = []
    viewer = principal.consent_on(interaction)
    for rtype in sorted(definitions().resource_types if types is None else set(types)):
        if not principal.allows(interaction, rtype):
            continue
        scopes = principal.access(interaction, rtype)
        if scopes is not None and viewer is not None:  # Consents are joined once, for every type
            scopes = _without_consent(scopes)
        if scopes is None:
            open_types.append(rtype)
        else:
            ors.append(
                f"({alias}.resource_type = {b.arg(rtype)} AND {scopes_sql(b, scopes, rtype, alias, local_base)})"
            )
    if open_types:
        ors.insert(0, f"{alias}.resource_type = ANY({b.arg(open_types)}::text[])")
    if not ors:
        return "false"
    reach = "(" + " OR ".join(ors) + ")"
    return reach if viewer is None else f"({reach} AND {consent_sql(b, viewer, ANY_TYPE, alias)})"


def types_access_sql(
    b: SqlBuilder, principal: Principal, interaction: str, types: list[str], alias: str, local_base: str | None
) -> str | None:
    """Predicate for a search of the given types (each needs the right: 403 otherwise)."""
    if len(types) == 1:
        return type_access_sql(b, principal, interaction, types[0], alias, local_base)
    viewer = principal.consent_on(interaction)
    parts = []
    for t in types:
        scopes = principal.access(interaction, t)  # 403 when nothing allows
        if scopes is not None and viewer is not None:  # Consents are joined once, for every type
            scopes = _without_consent(scopes)
        parts.append((t, None if scopes is None else scopes_sql(b, scopes, t, alias, local_base)))
    consent = viewer is not None and any(in_patient_compartment(t) for t in types)
    if all(p is None for _, p in parts) and not consent:
        return None
    reach = "(" + " OR ".join(f"({alias}.resource_type = {b.arg(t)} AND {p or 'true'})" for t, p in parts) + ")"
    return f"({reach} AND {consent_sql(b, viewer, ANY_TYPE, alias)})" if consent and viewer else reach


def _without_consent(scopes: tuple[Scope, ...]) -> tuple[Scope, ...] | None:
    """The Scopes without their Consent viewer (joined separately); None for every row."""
    stripped = tuple(dict.fromkeys(replace(s, consent=None) for s in scopes))
    return None if stripped == (Scope(),) else stripped


def touched_access(principal: Principal, local_base: str | None) -> AccessSql | None:
    """The builder hook for the types a search touches besides its own (chain targets,
    `_has` types, `_list`'s List): their rows are restricted as a search of them would be,
    and a type the principal may not search raises 403. None for an unrestricted caller."""
    if principal.grants is None:
        return None

    def access(b: SqlBuilder, rtype: str, alias: str) -> str | None:
        return type_access_sql(b, principal, "search", rtype, alias, local_base)

    return access
