"""Patients' Consents as SQL: the predicate that leaves denied rows out of every read.

search_consent (migration 0019, written by search/extract/consent.py in the Consent's
own write statement) holds one row per typed provision of each active patient-privacy
Consent, with the condition groups of it and its ancestors. A row of a patient's data
is denied to a viewer when some deny provision of a Consent of that patient applies to
it and no permit provision of the same Consent deeper than it does (the deepest
applying provision decides; deny wins at equal depth). The predicate joins the query's
own SQL, so it reads the same snapshot: a Consent change holds from the next statement
on every node. With no deny provision stored at all it costs one InitPlan per query.
"""

from __future__ import annotations

from functools import cache

from ..auth.principal import ConsentViewer
from .care_dates import care_date_param
from .compartment import compartment_params
from .sql import ANY_TYPE, SqlBuilder


@cache
def _compartment_pairs() -> list[str]:
    """`Type param` of every reference parameter that puts a type in a Patient compartment."""
    return sorted(f"{t} {p}" for t, params in compartment_params("Patient").items() for p in params)


@cache
def _care_pairs() -> list[str]:
    """`Type param` of every type's care-date parameter (provision.dataPeriod)."""
    return sorted(f"{t} {p}" for t in compartment_params("Patient") if (p := care_date_param(t)) is not None)


def _actors_sql(b: SqlBuilder, viewer: ConsentViewer) -> str:
    """The references a provision's actor may name to mean the viewer: its fhirUser, the
    PractitionerRoles it is (or whose practitioner it is), their Organizations, and the
    CareTeams it or one of those roles is a participant of. Uncorrelated: one InitPlan."""
    if not viewer.fhir_user:
        return "'{}'::text[]"
    user = b.arg(viewer.fhir_user)
    utype, uid = (b.arg(part, "::text") for part in viewer.fhir_user.split("/", 1))
    return (
        "(WITH roles AS ("
        f" SELECT x.resource_id AS id FROM search_reference x WHERE x.resource_type = 'PractitionerRole'"
        f" AND x.param = 'practitioner' AND x.target_type = {utype} AND x.target_id = {uid}"
        f" UNION SELECT {uid} WHERE {utype} = 'PractitionerRole')"
        f" SELECT array_agg(DISTINCT a) FROM (SELECT {user}::text AS a"
        " UNION ALL SELECT 'PractitionerRole/' || id FROM roles"
        " UNION ALL SELECT 'Organization/' || o.target_id FROM search_reference o"
        " WHERE o.resource_type = 'PractitionerRole' AND o.param = 'organization' AND o.target_type = 'Organization'"
        " AND o.resource_id IN (SELECT id FROM roles)"
        " UNION ALL SELECT 'CareTeam/' || c.resource_id FROM search_reference c"
        " WHERE c.resource_type = 'CareTeam' AND c.param = 'participant' AND ("
        f" (c.target_type = {utype} AND c.target_id = {uid})"
        " OR (c.target_type = 'PractitionerRole' AND c.target_id IN (SELECT id FROM roles)))) s)"
    )


def _applies_sql(b: SqlBuilder, n: str, rtype: str | None, alias: str, actors: str, purposes: str) -> str:
    """Predicate: every condition group of provision row n matches row alias (of rtype;
    None: alias.resource_type tells it) for the viewer."""
    g = b.alias("g")
    t = b.alias("t")
    d = b.alias("d")
    type_sql = b.arg(rtype, "::text") if rtype is not None else f"{alias}.resource_type"

    def token(param: str) -> str:
        return (
            f"EXISTS (SELECT 1 FROM search_token {t} WHERE {t}.resource_type = {type_sql}"
            f" AND {t}.resource_id = {alias}.id AND {t}.param = '{param}'"
            f" AND {g}.c->'v' ?| ARRAY[coalesce({t}.system, '') || '|' || {t}.code, '*|' || {t}.code])"
        )

    if rtype is not None:
        care = care_date_param(rtype)
        care_sql = f"{d}.param = {b.arg(care)}" if care else "false"
    else:
        care_sql = f"({d}.resource_type || ' ' || {d}.param) = ANY({b.arg(_care_pairs())}::text[])"
    match = (
        f"CASE {g}.c->>'k'"
        f" WHEN 'actor' THEN {g}.c->'v' ?| {actors}"
        f" WHEN 'purpose' THEN {g}.c->'v' ?| {purposes}"
        f" WHEN 'class' THEN {g}.c->'v' ? {type_sql}"
        f" WHEN 'data' THEN {g}.c->'v' ? ({type_sql} || '/' || {alias}.id)"
        f" WHEN 'period' THEN coalesce(({g}.c->>'lo')::timestamptz <= now(), true)"
        f" AND coalesce(({g}.c->>'hi')::timestamptz >= now(), true)"
        f" WHEN 'code' THEN {token('code')}"
        f" WHEN 'security' THEN {token('_security')}"
        f" WHEN 'dataPeriod' THEN EXISTS (SELECT 1 FROM search_date {d} WHERE {d}.resource_type = {type_sql}"
        f" AND {d}.resource_id = {alias}.id AND {care_sql}"
        f" AND {d}.high >= coalesce(({g}.c->>'lo')::timestamptz, '-infinity')"
        f" AND {d}.low <= coalesce(({g}.c->>'hi')::timestamptz, 'infinity'))"
        " ELSE false END"
    )
    return f"NOT EXISTS (SELECT 1 FROM jsonb_array_elements({n}.conditions) AS {g}(c) WHERE NOT ({match}))"


def denied_sql(b: SqlBuilder, viewer: ConsentViewer, rtype: str, alias: str) -> str:
    """Predicate: some active Consent of a patient whose compartment holds row alias (of
    rtype, or ANY_TYPE) denies it to viewer."""
    specific = rtype if rtype != ANY_TYPE else None
    x, dn, p = b.alias(), b.alias("cd"), b.alias("cp")
    if specific is None:
        patients = (
            f"(({alias}.resource_type = 'Patient' AND {dn}.patient_id = {alias}.id)"
            f" OR {dn}.patient_id IN (SELECT {x}.target_id FROM search_reference {x}"
            f" WHERE {x}.resource_type = {alias}.resource_type AND {x}.resource_id = {alias}.id"
            f" AND {x}.target_type = 'Patient'"
            f" AND ({x}.resource_type || ' ' || {x}.param) = ANY({b.arg(_compartment_pairs())}::text[])))"
        )
    elif specific == "Patient":
        patients = f"{dn}.patient_id = {alias}.id"
    else:
        params = list(compartment_params("Patient").get(specific, ()))
        patients = (
            f"{dn}.patient_id IN (SELECT {x}.target_id FROM search_reference {x}"
            f" WHERE {x}.resource_type = {b.arg(specific)} AND {x}.resource_id = {alias}.id"
            f" AND {x}.param = ANY({b.arg(params)}::text[]) AND {x}.target_type = 'Patient')"
        )
    actors = _actors_sql(b, viewer)
    purposes = f"{b.arg(list(viewer.purposes))}::text[]"
    own = f" AND {dn}.patient_id <> {b.arg(viewer.own_patient)}" if viewer.own_patient else ""
    return (
        f"EXISTS (SELECT 1 FROM search_consent {dn} WHERE {patients} AND {dn}.decision = 'deny'{own}"
        f" AND {_applies_sql(b, dn, specific, alias, actors, purposes)}"
        f" AND NOT EXISTS (SELECT 1 FROM search_consent {p} WHERE {p}.resource_type = 'Consent'"
        f" AND {p}.resource_id = {dn}.resource_id AND {p}.decision = 'permit' AND {p}.depth > {dn}.depth"
        f" AND {_applies_sql(b, p, specific, alias, actors, purposes)}))"
    )


def consent_sql(b: SqlBuilder, viewer: ConsentViewer, rtype: str, alias: str) -> str:
    """Predicate: no Consent denies row alias (of rtype, or ANY_TYPE) to viewer. Reads only
    alias.id (and alias.resource_type for ANY_TYPE), so it also filters bare id lists."""
    return (
        "((SELECT NOT EXISTS (SELECT 1 FROM search_consent WHERE decision = 'deny'))"
        f" OR NOT {denied_sql(b, viewer, rtype, alias)})"
    )
