"""Patients' Consents as SQL: the predicate that leaves denied rows out of every read.

search_consent (migration 0019, written by search/extract/consent.py in the Consent's
own write statement) holds one row per typed provision of each active patient-privacy
Consent, with the condition groups of it and its ancestors. A row of a patient's data
is denied to a viewer when some deny provision of a Consent of that patient applies to
it and no permit provision of the same Consent deeper than it does (the deepest
applying provision decides; deny wins at equal depth). The predicate joins the query's
own SQL, so it reads the same snapshot: a Consent change holds from the next statement
on every node. The matching is done by SQL functions (migration 0019), so the queries
stay small to plan; with no deny provision stored at all they are never called and the
predicate costs one InitPlan per query.
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


def _pairs(pairs: list[str], rtype: str | None) -> list[str]:
    """The `Type param` pairs of rtype only (None: of every type)."""
    return pairs if rtype is None else [p for p in pairs if p.split(" ", 1)[0] == rtype]


def denied_sql(b: SqlBuilder, viewer: ConsentViewer, rtype: str, alias: str) -> str:
    """Predicate: some active Consent of a patient whose compartment holds row alias (of
    rtype, or ANY_TYPE) denies it to viewer (function consent_denies, migration 0019).
    The viewer's actor references are worked out once per statement (an InitPlan)."""
    specific = rtype if rtype != ANY_TYPE else None
    type_sql = b.arg(specific, "::text") if specific is not None else f"{alias}.resource_type"
    actors = f"(SELECT consent_actors({b.arg(viewer.fhir_user, '::text')}))"
    return (
        f"consent_denies({type_sql}, {alias}.id, {b.arg(_pairs(_compartment_pairs(), specific))}::text[],"
        f" {b.arg(_pairs(_care_pairs(), specific))}::text[], {actors},"
        f" {b.arg(list(viewer.purposes))}::text[], {b.arg(viewer.own_patient, '::text')})"
    )


def _patients_denying_sql(b: SqlBuilder, rtype: str | None, alias: str) -> str:
    """Predicate: row alias belongs to a patient who has some deny provision (cheap, by
    index: only such rows are handed to consent_denies)."""
    x, d = b.alias(), b.alias("cd")
    if rtype is None:
        owner = f"{x}.resource_type = {alias}.resource_type AND {x}.resource_id = {alias}.id"
        is_patient = f"{alias}.resource_type = 'Patient'"
        param = f"({x}.resource_type || ' ' || {x}.param) = ANY({b.arg(_compartment_pairs())}::text[])"
    else:
        owner = f"{x}.resource_type = {b.arg(rtype)} AND {x}.resource_id = {alias}.id"
        is_patient = "true" if rtype == "Patient" else "false"
        params = [p.split(" ", 1)[1] for p in _pairs(_compartment_pairs(), rtype)]
        param = f"{x}.param = ANY({b.arg(params)}::text[])"
    own = f"EXISTS (SELECT 1 FROM search_consent {d} WHERE {d}.patient_id = {alias}.id AND {d}.decision = 'deny')"
    y = b.alias("cd")
    referred = (
        f"EXISTS (SELECT 1 FROM search_reference {x} JOIN search_consent {y} ON {y}.patient_id = {x}.target_id"
        f" AND {y}.decision = 'deny' WHERE {owner} AND {param} AND {x}.target_type = 'Patient')"
    )
    if is_patient == "false":
        return referred
    return f"(({is_patient} AND {own}) OR {referred})"


def consent_sql(b: SqlBuilder, viewer: ConsentViewer, rtype: str, alias: str) -> str:
    """Predicate: no Consent denies row alias (of rtype, or ANY_TYPE) to viewer. Reads only
    alias.id (and alias.resource_type for ANY_TYPE), so it also filters bare id lists.
    Three steps, each only when the one before cannot answer: no deny provision stored at
    all (one InitPlan per statement), none of the row's patients (an index probe per row),
    then the full judgement (consent_denies)."""
    specific = rtype if rtype != ANY_TYPE else None
    return (
        "((SELECT NOT EXISTS (SELECT 1 FROM search_consent WHERE decision = 'deny'))"
        f" OR NOT {_patients_denying_sql(b, specific, alias)}"
        f" OR NOT {denied_sql(b, viewer, rtype, alias)})"
    )
