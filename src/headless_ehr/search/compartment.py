"""Compartments (http://hl7.org/fhir/R4/compartmentdefinition.html) as SQL predicates.

A resource is in Patient/123's compartment when one of the reference parameters the
CompartmentDefinition names for its type points at Patient/123 (or it is that
Patient). Used by compartment search and by patient-scoped access.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache

from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError
from .care_dates import care_period_sql
from .sql import SqlBuilder


@dataclass(frozen=True)
class Compartment:
    """The compartment of one resource, of several (a tuple of ids), or of any (None)."""

    type: str  # Patient | Encounter | RelatedPerson | Practitioner | Device
    id: str | tuple[str, ...] | None
    # $everything's start/end: members other than the focus must have care in this window
    period: tuple[datetime | None, datetime | None] | None = None


@cache
def compartment_params(compartment_type: str) -> dict[str, tuple[str, ...]]:
    """Resource type -> the parameters linking it into a compartment of compartment_type."""
    definition = definitions().compartment_definitions.get(compartment_type)
    if definition is None:
        raise FhirError.of(404, "not-found", f"there is no {compartment_type} compartment")
    return {
        r["code"]: tuple(p for p in r.get("param", ()) if p != "{def}")
        for r in definition.get("resource", ())
        if r.get("param")
    }


def member_types(compartment_type: str) -> list[str]:
    types = set(compartment_params(compartment_type))
    types.add(compartment_type)
    return sorted(types)


def compartment_sql(b: SqlBuilder, compartment: Compartment, rtype: str, alias: str) -> str:
    """Predicate: resource alias (of rtype) is in the compartment."""
    params = compartment_params(compartment.type).get(rtype, ())
    ids = compartment.id
    ors = []
    if rtype == compartment.type:
        if ids is None:
            ors.append("true")
        else:
            ors.append(f"{alias}.id = ANY({b.arg(_as_list(ids))}::text[])")
    if params:
        x = b.alias()
        owner = "" if ids is None else f" AND {x}.target_id = ANY({b.arg(_as_list(ids))}::text[])"
        ors.append(
            f"{alias}.id IN (SELECT {x}.resource_id FROM search_reference {x}"
            f" WHERE {x}.resource_type = {b.arg(rtype)} AND {x}.param = ANY({b.arg(list(params))}::text[])"
            f" AND {x}.target_type = {b.arg(compartment.type)}{owner})"
        )
    member = "(" + " OR ".join(ors) + ")" if ors else "false"
    if compartment.period is None or rtype == compartment.type:
        return member
    return f"({member} AND {care_period_sql(b, rtype, alias, *compartment.period)})"


def _as_list(ids: str | tuple[str, ...]) -> list[str]:
    return [ids] if isinstance(ids, str) else list(ids)
