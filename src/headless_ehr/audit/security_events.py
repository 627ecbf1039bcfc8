"""R4 AuditEvents of the security events around the FHIR API, shaped after IHE BALP and IUA:
sign-ins on the authorize pages, authorizations and token grants (IUA ITI-71), token
introspection (ITI-102) and revocation, and changes through the admin API and CLI.

Codes (R4 binds type and subtype extensibly: DICOM, FHIR audit-event-type and IHE codes):
- sign-in on the login page: type DCM 110114 User Authentication, subtype DCM 110122 Login;
- authorization (a code) and token request: 110114, urn:ihe:event-type-code ITI-71 Get Access Token;
- token introspection: 110114, ITI-102 Introspect Token;
- token revocation: 110114, DCM 110123 Logout (RFC 7009: the app ends its grant);
- a client or user created, enabled, disabled or deleted: DCM 110113 Security Alert,
  DCM 110137 User Security Attributes Changed; an access policy: 110113, 110136 Security
  Roles Changed; an EHR launch context: 110113, 110132 Use of Restricted Function; a new
  signing key: 110113, 110129 Security Configuration.
Action E for the first four, C/U/D for changes.

Nothing secret is ever passed in: no password, client secret, code, code_verifier,
assertion, launch value, access or refresh token; a token is named by its `jti` only.
Free text from a request is cleaned (audit.event.clean) and cut to a bound.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from .chain import Entry
from .event import DCM, ENTITY_TYPE, OBJECT_ROLE, SOURCE, clean, outcome_code
from .index import index_of

IHE_EVENT = "urn:ihe:event-type-code"
CLIENT_ID = "urn:ehr:client-id"
USERNAME = "urn:ehr:username"
OS_USER = "urn:ehr:os-user"
URI = "urn:ietf:rfc:3986"  # identifiers that are URIs: urn:ehr:admin:users/alice
JTI = "urn:ehr:token-jti"
_HUMAN = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"

USER_AUTHENTICATION = (DCM, "110114", "User Authentication")
SECURITY_ALERT = (DCM, "110113", "Security Alert")
LOGIN = (DCM, "110122", "Login")
LOGOUT = (DCM, "110123", "Logout")
GET_ACCESS_TOKEN = (IHE_EVENT, "ITI-71", "Get Access Token")
INTROSPECT_TOKEN = (IHE_EVENT, "ITI-102", "Introspect Token")
USER_SECURITY_ATTRIBUTES_CHANGED = (DCM, "110137", "User Security Attributes Changed")
SECURITY_ROLES_CHANGED = (DCM, "110136", "Security Roles Changed")
RESTRICTED_FUNCTION = (DCM, "110132", "Use of Restricted Function")
SECURITY_CONFIGURATION = (DCM, "110129", "Security Configuration")

# object-role codes of what an admin change touches
SECURITY_USER = "11"  # Security User Entity: a client or user account
SECURITY_GRANULARITY = "14"  # Security Granularity Definition: an access policy
SECURITY_RESOURCE = "13"  # Security Resource: a signing key

MAX_NAME = 200  # a client id, username or object name taken from a request
MAX_TEXT = 2000  # a scope, a detail
MAX_OUTCOME = 1000

Coding = tuple[str, str, str]


@dataclass
class SecurityEvent:
    """One security event, as the endpoint saw it. The requestor is who sent the request:
    the user at sign-in, else the client application (or, without either, an address only)."""

    type: Coding
    subtype: Coding
    status: int  # the HTTP status answered: outcome 0 below 400, 4 for 4xx, 8 for 5xx
    address: str | None  # the client's network address (through trusted proxies)
    action: str = "E"
    client_id: str | None = None  # authenticated, or as claimed by a refused request
    username: str | None = None
    fhir_user: str | None = None
    user_requests: bool = False  # the user, not the client, sent the request (sign-in pages)
    os_user: str | None = None  # the command line's operating-system user (ehr user/client create)
    patients: list[str] = field(default_factory=list)  # ids or Patient/id
    objects: list[tuple[str, str]] = field(default_factory=list)  # (urn:ehr:admin:… name, object-role code)
    token_id: str | None = None  # jti of the access token issued, introspected or revoked
    details: dict[str, str] = field(default_factory=dict)  # grant_type, scope, … of the request
    description: str | None = None  # why it was refused (the OAuth error and its description)


def _text(value: str, bound: int) -> str:
    return clean(value[:bound])


def _coding(code: Coding) -> dict[str, str]:
    return {"system": code[0], "code": code[1], "display": code[2]}


def _agents(event: SecurityEvent) -> list[dict[str, Any]]:
    network: dict[str, str] | None = None
    if event.address:
        address = _text(event.address, MAX_NAME)
        network = {"address": address, "type": "2" if address[:1].isdigit() or ":" in address else "1"}
    agents: list[dict[str, Any]] = []
    if event.client_id:
        agents.append(
            {
                "type": {"coding": [_coding((DCM, "110150", "Application"))]},
                "who": {"identifier": {"system": CLIENT_ID, "value": _text(event.client_id, MAX_NAME)}},
                "requestor": not event.user_requests,
            }
        )
    if event.username or event.fhir_user:
        who: dict[str, Any] = {}
        if event.fhir_user:
            who["reference"] = _text(event.fhir_user, MAX_NAME)
        if event.username:
            who["identifier"] = {"system": USERNAME, "value": _text(event.username, MAX_NAME)}
        user = {"type": {"coding": [{"system": _HUMAN, "code": "humanuser"}]}, "who": who}
        if event.username:
            user["altId"] = _text(event.username, MAX_NAME)
        user["requestor"] = event.user_requests
        agents.append(user)
    if event.os_user:
        agents.append(
            {
                "type": {"coding": [_coding((DCM, "110150", "Application"))]},
                "who": {"identifier": {"system": OS_USER, "value": _text(event.os_user, MAX_NAME)}},
                "name": "ehr command line",
                "requestor": True,
            }
        )
    requestors = [a for a in agents if a["requestor"]]
    if not requestors:  # nobody known (a refused request without credentials): where it came from
        requestor: dict[str, Any] = {"type": {"coding": [_coding((DCM, "110153", "Source Role ID"))]}}
        requestor["requestor"] = True
        agents.insert(0, requestor)
        requestors = [requestor]
    if network is not None:
        requestors[0]["network"] = network
    # the requestor first: the index takes the address of the first requestor
    return sorted(agents, key=lambda a: not a["requestor"])


def _entity(what: dict[str, Any], entity_type: str, role: str | None) -> dict[str, Any]:
    entity: dict[str, Any] = {"what": what, "type": {"system": ENTITY_TYPE, "code": entity_type}}
    if role is not None:
        entity["role"] = {"system": OBJECT_ROLE, "code": role}
    return entity


def _entities(event: SecurityEvent) -> list[dict[str, Any]]:
    entities = []
    for patient in dict.fromkeys(event.patients):
        ref = patient if patient.startswith("Patient/") else f"Patient/{patient}"
        entities.append(_entity({"reference": _text(ref, MAX_NAME)}, "1", "1"))  # person, patient
    for name, role in event.objects:
        entities.append(_entity({"identifier": {"system": URI, "value": _text(name, MAX_NAME)}}, "2", role))
    details = [{"type": k, "valueString": _text(v, MAX_TEXT)} for k, v in event.details.items() if v]
    if event.token_id or details:  # the request itself (BALP IUA: the access token request)
        request: dict[str, Any] = {"type": {"system": ENTITY_TYPE, "code": "2"}}  # system object
        if event.token_id:
            request["what"] = {"identifier": {"system": JTI, "value": _text(event.token_id, MAX_NAME)}}
        if details:
            request["detail"] = details
        entities.append(request)
    return entities


def security_event(event: SecurityEvent) -> Entry:
    """The AuditEvent of a security event, as canonical JSON bytes ready for the chain."""
    event_id = uuid.uuid4()
    now = datetime.now(UTC)
    content: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(event_id),
        "type": _coding(event.type),
        "subtype": [_coding(event.subtype)],
        "action": event.action,
        "recorded": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": outcome_code(event.status),
        "agent": _agents(event),
        "source": SOURCE,
    }
    if event.description:
        content["outcomeDesc"] = _text(f"{event.status} {event.description}", MAX_OUTCOME)
    elif event.status >= 400:
        content["outcomeDesc"] = str(event.status)
    entities = _entities(event)
    if entities:
        content["entity"] = entities
    return Entry(event_id, now, orjson.dumps(content, option=orjson.OPT_SORT_KEYS), index_of(content))


def admin_object(kind: str, name: str) -> str:
    """The name of an account, policy or key in entity.what.identifier: urn:ehr:admin:users/alice."""
    return f"urn:ehr:admin:{kind}/{name}"
