"""Who is asking, and what they may do.

Every store and search call takes a Principal and checks it where data is touched,
so no route can forget the check. A Principal is built from a verified access token
(auth/authenticate.py) or is SYSTEM (the server itself, the CLI, `EHR_AUTH=off`).
This module is data and rules only: the store and search layers turn `access()` into
SQL that joins every query they build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError
from .scopes import PERMISSION, Grant, grants_of, split_scopes

WRITE_INTERACTIONS = frozenset({"create", "update", "patch", "delete"})


@dataclass(frozen=True)
class Scope:
    """One way a principal reaches rows of a type: inside Patient/<patient>'s compartment
    (when patient is set) and matching the v2 search criteria (when any). Rows are
    visible when they satisfy any of the principal's Scopes for the type."""

    patient: str | None = None
    criteria: tuple[tuple[str, str], ...] = ()
    # writes: and in no other patient's compartment (a patient token may not plant data
    # in another patient's record through a second reference, e.g. subject B, performer A)
    exclusive: bool = False


UNRESTRICTED = None  # access(): every row of the type


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    grants None: every type, every interaction, no restriction (SYSTEM, the CLI).
    patient: the patient in context (SMART `patient` launch context); patient-level
    grants reach that patient's compartment only. fhir_user: the user's own resource
    (`Practitioner/7`, `Patient/123`); a user who is a Patient is held to their own
    compartment under user-level grants too. system: may run server-wide operations.
    """

    subject: str
    grants: tuple[Grant, ...] | None = None
    system: bool = False
    client_id: str | None = None
    fhir_user: str | None = None
    patient: str | None = None
    encounter: str | None = None
    scope: str = ""
    roles: tuple[str, ...] = ()
    token_id: str | None = None
    expires_at: int | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    # access() answers by (interaction, type): a principal lives as long as its token in
    # the verified-token cache, so each request of a token re-asks the same questions
    _answers: dict[tuple[str, str], tuple[Scope, ...] | bool | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def from_scopes(cls, subject: str, scope: str, **kwargs: object) -> Principal:
        """A principal holding the resource grants of a scope string; `system` when it has a system/ grant."""
        grants = grants_of(split_scopes(scope))
        kwargs.setdefault("system", any(g.context == "system" for g in grants))
        return cls(subject=subject, grants=grants, scope=scope, **kwargs)  # type: ignore[arg-type]

    def _covering(self, interaction: str, resource_type: str) -> list[Grant]:
        assert self.grants is not None
        letter = PERMISSION[interaction]
        return [g for g in self.grants if g.covers(letter, resource_type)]

    def allows(self, interaction: str, resource_type: str) -> bool:
        """Some grant permits the interaction on the type (rows may still be restricted)."""
        return self._answer(interaction, resource_type) is not False

    def require(self, interaction: str, resource_type: str) -> None:
        """Raise 403 unless this principal may perform the interaction on the type at all."""
        if not self.allows(interaction, resource_type):
            raise FhirError.of(403, "forbidden", f"not permitted to {interaction} {resource_type} resources")

    def reaches_everything(self, interaction: str) -> bool:
        """The interaction is open on every row of every type (no compartment, no criteria)."""
        if self.grants is None:
            return True
        letter = PERMISSION[interaction]
        return any(
            g.covers(letter, "*") and g.resource_type == "*" and not g.criteria and self.compartment_patient(g) is None
            for g in self.grants
        )

    def require_system(self, operation: str) -> None:
        """Raise 403 unless this is a system-level caller."""
        if not self.system:
            raise FhirError.of(403, "forbidden", f"{operation} may only be run by a system-level client")

    def access(self, interaction: str, resource_type: str) -> tuple[Scope, ...] | None:
        """The rows of the type this principal may reach with the interaction:
        None for all of them, else those matching any returned Scope. 403 when none."""
        answer = self._answer(interaction, resource_type)
        if answer is False:
            raise FhirError.of(403, "forbidden", f"not permitted to {interaction} {resource_type} resources")
        return answer  # type: ignore[return-value]

    def _answer(self, interaction: str, resource_type: str) -> tuple[Scope, ...] | bool | None:
        """access() without the raise: False when nothing allows, remembered."""
        if self.grants is None:
            return UNRESTRICTED
        key = (interaction, resource_type)
        if key in self._answers:
            return self._answers[key]
        answer: tuple[Scope, ...] | bool | None = False
        scopes: list[Scope] = []
        for grant in self._covering(interaction, resource_type):
            scope = self._scope_of(grant, interaction, resource_type)
            if scope is None:
                answer = UNRESTRICTED
                break
            if scope is not False:
                scopes.append(scope)
        else:
            if scopes:
                answer = tuple(dict.fromkeys(scopes))
        if len(self._answers) < 4096:  # bounded: types x interactions
            self._answers[key] = answer
        return answer

    def _scope_of(self, grant: Grant, interaction: str, resource_type: str) -> Scope | bool | None:
        """What one covering grant opens: None all rows, a Scope some, False none."""
        patient = self.compartment_patient(grant)
        if patient is None and not grant.criteria:
            return None
        if patient is not None and not in_patient_compartment(resource_type):
            # Medication, Organization, Practitioner…: readable with the scope, but a
            # patient's token writes only inside its own compartment.
            if interaction in WRITE_INTERACTIONS:
                return False
            if patient and (resource_type in ("Binary", "Bundle") or patient_reference_params(resource_type)):
                # Task.for, Device.patient, a Binary's securityContext, a stored Bundle's
                # content: outside the compartment definition, yet about patients;
                # readable unless about another one (search/access.py)
                return Scope(patient, grant.criteria)
            return Scope(None, grant.criteria) if grant.criteria else None
        if patient == "":
            return False  # a patient-level grant with no patient in context reaches nothing
        return Scope(patient, grant.criteria, exclusive=interaction in WRITE_INTERACTIONS)

    def compartment_patient(self, grant: Grant) -> str | None:
        """The patient whose compartment bounds a grant: "" when it should but none is known."""
        if grant.context == "patient":
            return self.patient or ""
        if grant.context == "user" and self.fhir_user and self.fhir_user.startswith("Patient/"):
            return self.fhir_user.removeprefix("Patient/")
        return None


@cache
def in_patient_compartment(resource_type: str) -> bool:
    """Patient itself, or a type the R4 Patient CompartmentDefinition lists with parameters."""
    if resource_type == "Patient":
        return True
    definition = definitions().compartment_definitions.get("Patient") or {}
    return any(r.get("code") == resource_type and r.get("param") for r in definition.get("resource", ()))


@cache
def patient_reference_params(resource_type: str) -> tuple[str, ...]:
    """The R4 reference parameters of a type that may point at a Patient."""
    return tuple(
        sorted(
            sp["code"]
            for sp in definitions().search_parameters
            if sp.get("type") == "reference"
            and resource_type in sp.get("base", ())
            and "Patient" in sp.get("target", ())
        )
    )


SYSTEM = Principal(subject="system", system=True)
