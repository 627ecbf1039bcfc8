"""The kick-off's caller, kept with an export job so that any node can run it later.

An export runs long after its kick-off request, possibly on another node, after a
restart, after its access token has expired. The job therefore keeps the Principal the
kick-off was authenticated as (its scopes, launch context, access policy rules, purpose
of use), and every line is written with exactly the rights the client had when it
asked: the rights are frozen at kick-off (docs/bulk.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..auth.policies import Rule
from ..auth.principal import SYSTEM, Principal


def owner_of(principal: Principal) -> str:
    """Who may poll, download and cancel: the same client, user and patient context."""
    return "|".join((principal.client_id or "", principal.subject, principal.patient or ""))


def _rule_json(rule: Rule) -> dict[str, Any]:
    return {
        "resource_type": rule.resource_type,
        "interactions": sorted(rule.interactions),
        "criteria": [list(p) for p in rule.criteria],
        "compartment": None if rule.compartment is None else [list(p) for p in rule.compartment],
        "hidden": list(rule.hidden),
        "readonly": list(rule.readonly),
    }


def _rule_of(data: dict[str, Any]) -> Rule:
    compartment = data["compartment"]
    return Rule(
        data["resource_type"],
        frozenset(data["interactions"]),
        tuple((n, v) for n, v in data["criteria"]),
        None if compartment is None else tuple((n, v) for n, v in compartment),
        tuple(data["hidden"]),
        tuple(data["readonly"]),
    )


def caller_json(principal: Principal) -> dict[str, Any]:
    """The principal as JSON (caller_of gives it back)."""
    if principal.grants is None:
        return {"unrestricted": True, "subject": principal.subject}
    return {
        "subject": principal.subject,
        "scope": principal.scope,
        "system": principal.system,
        "client_id": principal.client_id,
        "fhir_user": principal.fhir_user,
        "patient": principal.patient,
        "encounter": principal.encounter,
        "roles": list(principal.roles),
        "attributes": dict(principal.attributes),
        "purpose_of_use": list(principal.purpose_of_use),
        "break_the_glass": principal.break_the_glass,
        "policy": None if principal.policy is None else [_rule_json(r) for r in principal.policy],
    }


def caller_of(data: dict[str, Any]) -> Principal:
    """The principal caller_json() described: the same grants from the same scopes."""
    if data.get("unrestricted"):
        return replace(SYSTEM, subject=data["subject"])
    principal = Principal.from_scopes(
        data["subject"],
        data["scope"],
        system=data["system"],
        client_id=data["client_id"],
        fhir_user=data["fhir_user"],
        patient=data["patient"],
        encounter=data["encounter"],
        roles=tuple(data["roles"]),
        attributes=dict(data["attributes"]),
        purpose_of_use=tuple(data["purpose_of_use"]),
    )
    policy = data["policy"]
    return replace(
        principal,
        break_the_glass=data["break_the_glass"],
        policy=None if policy is None else tuple(_rule_of(r) for r in policy),
    )
