"""Care dates: the date search parameter that says when a resource's care happened.

Patient/$everything and Encounter/$everything take `start` and `end`, which "relate
to care dates, not record currency dates" (R4 patient-operation-everything). Each
type's care date is its `date` parameter unless the table below names a better one
(a MedicationRequest's `date` is a dosage date, its care date is `authoredon`); a
type without one, or a resource with no value for it, is always in range.
"""

from __future__ import annotations

from datetime import datetime

from .registry import search_params
from .sql import SqlBuilder, owned

# Types whose care date is not (or not only) their `date` parameter; None: no care date.
_CARE_DATE: dict[str, str | None] = {
    "Account": "period",
    "Basic": "created",
    "ChargeItem": "occurrence",
    "Claim": "created",
    "ClaimResponse": "created",
    "Communication": "sent",
    "CommunicationRequest": "occurrence",
    "Condition": "onset-date",
    "CoverageEligibilityRequest": "created",
    "CoverageEligibilityResponse": "created",
    "DetectedIssue": "identified",
    "DeviceRequest": "event-date",
    "DocumentManifest": "created",
    "ExplanationOfBenefit": "created",
    "Goal": "start-date",
    "ImagingStudy": "started",
    "Media": "created",
    "MedicationAdministration": "effective-time",
    "MedicationDispense": "whenhandedover",
    "MedicationRequest": "authoredon",
    "MedicationStatement": "effective",
    "NutritionOrder": "datetime",
    "Provenance": "recorded",
    "QuestionnaireResponse": "authored",
    "RequestGroup": "authored",
    "ServiceRequest": "occurrence",
    "Specimen": "collected",
    "VisionPrescription": "datewritten",
    # people: a birth date is not a date of care
    "Patient": None,
    "Person": None,
    "RelatedPerson": None,
    "Practitioner": None,
}


def care_date_param(resource_type: str) -> str | None:
    """The code of resource_type's care-date search parameter, or None."""
    code = _CARE_DATE.get(resource_type, "date")
    if code is None:
        return None
    param = search_params(resource_type).get(code)
    return code if param is not None and param.type == "date" else None


def care_period_sql(b: SqlBuilder, rtype: str, alias: str, start: datetime | None, end: datetime | None) -> str:
    """Predicate: resource alias (of rtype) has no care date, or one overlapping [start, end]."""
    code = care_date_param(rtype)
    if code is None or (start is None and end is None):
        return "true"
    x, y = b.alias(), b.alias()
    is_param = f"{x}.param = {b.arg(code)}"
    overlap = [f"{y}.param = {b.arg(code)}"]
    if start is not None:
        overlap.append(f"{y}.high >= {b.arg(start, '::timestamptz')}")
    if end is not None:
        overlap.append(f"{y}.low <= {b.arg(end, '::timestamptz')}")
    undated = owned(b, alias, rtype, "search_date", x, [is_param], negate=True)
    return f"({undated} OR {owned(b, alias, rtype, 'search_date', y, overlap)})"
