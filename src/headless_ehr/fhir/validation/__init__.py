"""StructureDefinition-driven validation of FHIR R4 JSON resources.

`validator().validate(resource)` returns the list of OperationOutcome issues for a
resource parsed with `headless_ehr.fhir.json.loads`; an empty list means valid.
Rules are compiled from the base StructureDefinitions once per type, on first use.
"""

from __future__ import annotations

from functools import lru_cache

from .validator import Validator

__all__ = ["Validator", "validator"]


@lru_cache(maxsize=1)
def validator() -> Validator:
    """The process-wide validator over the vendored R4 definitions."""
    return Validator()
