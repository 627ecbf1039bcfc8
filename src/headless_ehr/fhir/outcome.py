"""OperationOutcome issues and the error type every layer raises.

Errors are values the client can act on: an HTTP status, an issue code from the
R4 `issue-type` value set, a human-readable message and the FHIRPath of the
offending element when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue."""

    severity: str  # fatal | error | warning | information
    code: str  # R4 issue-type code: invalid, structure, required, value, not-found, ...
    diagnostics: str
    expression: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code}
        out["diagnostics"] = self.diagnostics
        if self.expression:
            out["expression"] = [self.expression]
        return out


def operation_outcome(issues: list[Issue] | tuple[Issue, ...]) -> dict[str, Any]:
    """An OperationOutcome resource; an empty list becomes a single 'all OK' issue."""
    if not issues:
        issues = [Issue("information", "informational", "All OK")]
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


@dataclass(eq=False)
class FhirError(Exception):
    """A failure the client caused or must know about, answered with an OperationOutcome."""

    status: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        status: int,
        code: str,
        diagnostics: str,
        expression: str | None = None,
        severity: str = "error",
    ) -> FhirError:
        return cls(status, [Issue(severity, code, diagnostics, expression)])

    def __str__(self) -> str:
        return "; ".join(i.diagnostics for i in self.issues) or f"HTTP {self.status}"


def has_errors(issues: list[Issue]) -> bool:
    return any(i.severity in ("error", "fatal") for i in issues)
