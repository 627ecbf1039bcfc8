"""Who is asking, and what they may do.

Every store and search call takes a Principal and checks it where data is touched,
so no route can forget the check. A Principal is built from a verified access token
(auth/authenticate.py) or is SYSTEM (the server itself, the CLI, `EHR_AUTH=off`).
This module is data and rules only: the store and search layers turn `access()` into
SQL that joins every query they build.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from typing import TYPE_CHECKING

from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError
from .scopes import PERMISSION, Grant, grants_of, split_scopes

if TYPE_CHECKING:
    from .policies import Rule

WRITE_INTERACTIONS = frozenset({"create", "update", "patch", "delete"})
READ_INTERACTIONS = frozenset({"read", "vread", "search", "history"})  # what patients' Consents govern
BREAK_THE_GLASS = "BTG"  # v3-ActReason: the purpose of use that overrides a Consent's deny


@dataclass(frozen=True)
class ConsentViewer:
    """Whom patients' Consents judge a read for (search/consent.py): the user's own
    resource (matched as a provision actor), the token's purposes of use, and the
    patient the user is, whose own Consents never hold them back."""

    fhir_user: str | None
    purposes: tuple[str, ...] = ()
    own_patient: str | None = None


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
    # an access policy's compartment rule: and in the compartment of a Patient matching
    # this search (auth/policies.py)
    patients: tuple[tuple[str, str], ...] | None = None
    # reads: and no active Consent of the row's patient denies this viewer (search/consent.py)
    consent: ConsentViewer | None = None


UNRESTRICTED = None  # access(): every row of the type

# A Subscription is in no patient's compartment, yet a patient's app may subscribe to its
# own record: the Subscriptions a patient-held token writes carry this tag with code
# `Patient/<id>` (set by events/lifecycle.py, never by the client), and such a token
# reaches only the Subscriptions tagged with its own patient.
SUBSCRIPTION_OWNER_TAG = "https://headless-ehr.dev/fhir/CodeSystem/subscription-owner"


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
    # the rules of the subject's access policies (auth/policies.py), intersected with the
    # grants; None: the grants alone; (): nothing
    policy: tuple[Rule, ...] | None = None
    # purpose of use codes of the token (v3-ActReason: TREAT, ETREAT, BTG, …)
    purpose_of_use: tuple[str, ...] = ()
    # BTG asked for and allowed by the subject's access policy (auth/policies.py):
    # Consents' denies are overridden (scopes and policies still hold)
    break_the_glass: bool = False
    # access() answers by (interaction, type): a principal lives as long as its token in
    # the verified-token cache, so each request of a token re-asks the same questions
    _answers: dict[tuple[str, str], tuple[Scope, ...] | bool | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # the agent block of this caller's AuditEvents by source address (audit/event.py)
    audit_memo: dict[str, object] = field(default_factory=dict, init=False, repr=False, compare=False)

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
        if self.consent_on(interaction) is not None:
            return False
        if self.policy is not None and not (
            all(r.resource_type == "*" for r in self.policy)
            and any(r.covers(interaction, "*") and not r.criteria and r.compartment is None for r in self.policy)
        ):
            return False
        letter = PERMISSION[interaction]
        return any(
            g.covers(letter, "*") and g.resource_type == "*" and not g.criteria and self.compartment_patient(g) is None
            for g in self.grants
        )

    def require_system(self, operation: str) -> None:
        """Raise 403 unless this is a system-level caller."""
        if not self.system:
            raise FhirError.of(403, "forbidden", f"{operation} may only be run by a system-level client")

    def require_operation(self, operation: str, resource_type: str | None) -> None:
        """Raise 403 when an access policy holds this principal and none of its rules grants
        `operation` on the type (any type for a system-level operation)."""
        if self.policy is None:
            return
        if not any(r.covers("operation", resource_type or "*") for r in self.rules_of(resource_type or "*")):
            raise FhirError.of(
                403, "forbidden", f"no access policy allows ${operation} on {resource_type or 'the system'}"
            )

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
        if self.policy is not None and answer is not False:
            answer = _intersect(answer, self._policy_scopes(interaction, resource_type))  # type: ignore[arg-type]
        viewer = self.consent_on(interaction) if in_patient_compartment(resource_type) else None
        if viewer is not None and answer is not False:
            scopes_now = (Scope(),) if answer is None else answer
            answer = tuple(replace(s, consent=viewer) for s in scopes_now)  # type: ignore[union-attr]
        if len(self._answers) < 4096:  # bounded: types x interactions
            self._answers[key] = answer
        return answer

    def consent_viewer(self) -> ConsentViewer | None:
        """Whom Consents judge this caller as; None for callers no Consent binds: the
        server itself and system-level clients."""
        if self.grants is None or self.system:
            return None
        parts = (self.fhir_user or "").rstrip("/").split("/")
        user = "/".join(parts[-2:]) if len(parts) >= 2 else None
        own = user.removeprefix("Patient/") if user and user.startswith("Patient/") else None
        return ConsentViewer(user, self.purpose_of_use, own)

    def consent_on(self, interaction: str) -> ConsentViewer | None:
        """The viewer Consents restrict this interaction for; None when they do not
        (writes, callers no Consent binds, break-the-glass)."""
        if interaction not in READ_INTERACTIONS or self.break_the_glass:
            return None
        return self.consent_viewer()

    def rules_of(self, resource_type: str) -> tuple[Rule, ...]:
        """The policy rules for a type: those naming it, else the `*` rules (a rule naming a
        type replaces the `*` rules for it: "every type of my patients, but of Observations
        only vital signs")."""
        policy = self.policy or ()
        named = tuple(r for r in policy if r.resource_type == resource_type)
        return named or tuple(r for r in policy if r.resource_type == "*")

    def _policy_scopes(self, interaction: str, resource_type: str) -> tuple[Scope, ...] | bool | None:
        """What the policy rules open: None all rows, Scopes some, False none."""
        assert self.policy is not None
        scopes: list[Scope] = []
        for rule in self.rules_of(resource_type):
            if not rule.covers(interaction, resource_type):
                continue
            if rule.compartment is not None and not in_patient_compartment(resource_type):
                continue  # Medication, Practitioner…: in no patient's compartment
            if not rule.criteria and rule.compartment is None:
                return UNRESTRICTED
            scopes.append(Scope(criteria=rule.criteria, patients=rule.compartment))
        return tuple(dict.fromkeys(scopes)) if scopes else False

    def _scope_of(self, grant: Grant, interaction: str, resource_type: str) -> Scope | bool | None:
        """What one covering grant opens: None all rows, a Scope some, False none."""
        patient = self.compartment_patient(grant)
        if patient is None and not grant.criteria:
            return None
        if patient is not None and resource_type == "Subscription":
            if not patient:
                return False
            return Scope(None, (*grant.criteria, ("_tag", f"{SUBSCRIPTION_OWNER_TAG}|Patient/{patient}")))
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


def _intersect(
    granted: tuple[Scope, ...] | None, ruled: tuple[Scope, ...] | bool | None
) -> tuple[Scope, ...] | bool | None:
    """Rows both the grants and the policy rules open: (any grant) AND (any rule),
    spread into one Scope per pair (a rule adds its criteria and compartment)."""
    if ruled is False:
        return False
    if ruled is None:
        return granted
    if granted is None:
        return ruled
    assert isinstance(ruled, tuple)
    return tuple(
        dict.fromkeys(
            Scope(g.patient, g.criteria + r.criteria, g.exclusive, r.patients) for g in granted for r in ruled
        )
    )


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
