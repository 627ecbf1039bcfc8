"""R4 AuditEvent content for a REST interaction, shaped after IHE BALP (Basic Audit Log Patterns).

type `rest` (DICOM/FHIR audit-event-type), subtype from http://hl7.org/fhir/restful-interaction,
action C/R/U/D/E, outcome 0 (success), 4 (refused or not found: 4xx) or 8 (server failure: 5xx);
agents: the user (fhirUser) or client as requestor, with the source address, and the client
application; entities: the patients and the resource touched, and the query of a search.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from ..auth.principal import Principal
from .chain import Entry
from .index import index_of

RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_EVENT_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"}
_ACTIONS = {
    "create": "C",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "operation": "E",
    "transaction": "E",
    "batch": "E",
}
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_SOURCE = {
    "observer": {"display": "headless-ehr"},
    "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}],
}


@dataclass
class Interaction:
    """What a request did, as the endpoint saw it."""

    code: str  # a restful-interaction code: read, vread, search-type, create, …
    status: int
    resource: str | None = None  # Type/id (Type/id/_history/v for vread)
    patients: list[str] = field(default_factory=list)  # Patient/id
    query: str | None = None  # a search's query string
    description: str | None = None  # e.g. the refusal's message, or `$everything`
    break_the_glass: bool = False  # BTG overrode a patient's Consent denying what was returned


def clean(text: str) -> str:
    """Request text as the log can hold it: no NUL (PostgreSQL text refuses it), no lone surrogates."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def outcome_code(status: int) -> str:
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def _agents(principal: Principal | None, address: str) -> list[dict]:
    address = clean(address)
    network = {"address": address, "type": "2" if address[:1].isdigit() or ":" in address else "1"}
    if principal is None:  # no valid token (401): only where it came from
        return [{"type": _dcm("110153", "Source Role ID"), "requestor": True, "network": network}]
    client_id = clean(principal.client_id or principal.subject)
    client = {"identifier": {"system": "urn:ehr:client-id", "value": client_id}}
    agents = [{"type": _dcm("110153", "Source Role ID"), "who": client, "requestor": principal.fhir_user is None}]
    agents[0]["network"] = network
    if principal.fhir_user:
        user = {
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": "humanuser"}
                ]
            },
            "who": {"reference": clean(principal.fhir_user)},
            "altId": clean(principal.subject),
            "requestor": True,
        }
        agents.append(user)
    return agents


def _dcm(code: str, display: str) -> dict:
    return {"coding": [{"system": _DCM, "code": code, "display": display}]}


def _entity(reference: str, entity_type: str, role: str) -> dict:
    return {
        "what": {"reference": reference},
        "type": {"system": _ENTITY_TYPE, "code": entity_type},
        "role": {"system": _OBJECT_ROLE, "code": role},
    }


def audit_event(interaction: Interaction, principal: Principal | None, address: str) -> Entry:
    """The AuditEvent of one interaction, as canonical JSON bytes ready for the chain."""
    interaction = Interaction(
        interaction.code,
        interaction.status,
        clean(interaction.resource) if interaction.resource else None,
        [clean(p) for p in interaction.patients],
        clean(interaction.query) if interaction.query is not None else None,
        clean(interaction.description) if interaction.description else None,
        interaction.break_the_glass,
    )
    event_id = uuid.uuid4()
    now = datetime.now(UTC)
    entities = [_entity(p, "1", "1") for p in dict.fromkeys(interaction.patients)]  # 1 person, 1 patient
    if interaction.resource and interaction.resource not in interaction.patients:
        entities.append(_entity(interaction.resource, "2", "4"))  # 2 system object, 4 domain resource
    if interaction.query is not None:
        query = {
            "type": {"system": _ENTITY_TYPE, "code": "2"},
            "role": {"system": _OBJECT_ROLE, "code": "24"},  # 24 query
            "query": base64.b64encode(interaction.query.encode()).decode(),
        }
        entities.append(query)
    event = {
        "resourceType": "AuditEvent",
        "id": str(event_id),
        "type": _EVENT_TYPE,
        "subtype": [{"system": RESTFUL_INTERACTION, "code": interaction.code}],
        "action": _ACTIONS.get(interaction.code, "R"),
        "recorded": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": outcome_code(interaction.status),
        "agent": _agents(principal, address),
        "source": _SOURCE,
    }
    if interaction.description:
        event["outcomeDesc"] = f"{interaction.status} {interaction.description}"[:1000]
    elif interaction.status >= 400:
        event["outcomeDesc"] = str(interaction.status)
    if entities:
        event["entity"] = entities
    if principal is not None and principal.purpose_of_use:  # BALP: the token's purpose of use
        event["purposeOfEvent"] = [
            {"coding": [{"system": ACT_REASON, "code": clean(code)}]} for code in principal.purpose_of_use
        ]
    if interaction.break_the_glass:  # the FHIR security labels' BTG, and in words
        event["meta"] = {"security": [{"system": ACT_REASON, "code": "BTG", "display": "break the glass"}]}
        event["outcomeDesc"] = (
            event.get("outcomeDesc", str(interaction.status)) + "; break-the-glass overrode a patient's Consent"
        )
    return Entry(event_id, now, orjson.dumps(event, option=orjson.OPT_SORT_KEYS), index_of(event))
