"""StructureDefinition-driven validation of FHIR R4 JSON resources.

`validator().validate(resource)` returns the list of OperationOutcome issues for a
resource parsed with `headless_ehr.fhir.json.loads`; an empty list means valid.
Rules are compiled from the base StructureDefinitions once per type, on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any, Protocol

from ..outcome import Issue
from .validator import Validator

__all__ = ["Validator", "validate_with", "validator"]


class _Limits(Protocol):
    max_narrative_bytes: int


@lru_cache(maxsize=1)
def validator() -> Validator:
    """The process-wide validator over the vendored R4 definitions."""
    return Validator()


def validate_with(limits: _Limits) -> Callable[[Any], list[Issue]]:
    """The process-wide validator's `validate` under the configured limits (Settings)."""
    return partial(validator().validate, max_narrative_bytes=limits.max_narrative_bytes)
