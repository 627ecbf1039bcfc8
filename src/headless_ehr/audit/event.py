"""R4 AuditEvent content for a REST interaction, shaped after IHE BALP (Basic Audit Log Patterns).

type `rest` (DICOM/FHIR audit-event-type), subtype from http://hl7.org/fhir/restful-interaction,
action C/R/U/D/E, outcome 0 (success), 4 (refused or not found: 4xx) or 8 (server failure: 5xx);
agents: the user (fhirUser) or client as requestor, with the source address, and the client
application; entities: the patients and the resource touched, and the query of a search.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from ..auth.principal import Principal
from .chain import Entry
from .index import Index

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
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SOURCE = {
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
    """Request text as the log can hold it: no NUL (PostgreSQL text refuses it), no unit
    separator (the search columns travel joined by it, audit/chain.py), no lone surrogates."""
    if text.isascii() and "\x00" not in text and "\x1f" not in text:
        return text
    return text.replace("\x00", "\ufffd").replace("\x1f", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def outcome_code(status: int) -> str:
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


class _Caller:
    """What every event of one caller (token and source address) shares: the agent block
    and its index keys (audit/index.py reads the same keys back from the content), and the
    serialized opening of its events by (subtype, outcome). A principal lives as long as its
    token in the verified-token cache, so this is built once per token and address."""

    __slots__ = ("address", "agents", "heads", "keys", "read_template")

    def __init__(self, principal: Principal | None, address: str) -> None:
        self.agents, self.keys = _agents_of(principal, address)
        self.address = self.agents[0]["network"]["address"]
        self.heads: dict[tuple[str, str], bytes] = {}
        self.read_template: ReadTemplate | None = None

    def head(self, principal: Principal | None, code: str, action: str, outcome: str) -> bytes:
        """The event's JSON up to its own parts (id, time, outcomeDesc, entity, meta), open."""
        found = self.heads.get((code, outcome))
        if found is None:
            head = {
                "resourceType": "AuditEvent",
                "type": _EVENT_TYPE,
                "subtype": [{"system": RESTFUL_INTERACTION, "code": code}],
                "action": action,
                "outcome": outcome,
                "agent": self.agents,
                "source": SOURCE,
            }
            if principal is not None and principal.purpose_of_use:  # BALP: the token's purpose of use
                head["purposeOfEvent"] = [
                    {"coding": [{"system": ACT_REASON, "code": clean(reason)}]} for reason in principal.purpose_of_use
                ]
            found = orjson.dumps(head)[:-1]
            if len(self.heads) < 64:  # bounded: subtypes x outcomes
                self.heads[(code, outcome)] = found
        return found


def _caller(principal: Principal | None, address: str) -> _Caller:
    memo = principal.audit_memo if principal is not None else _ANONYMOUS
    found = memo.get(address)
    if found is None:
        found = _Caller(principal, address)
        if len(memo) < 64:  # bounded: a token used from many addresses builds the rest each time
            memo[address] = found
    return found  # type: ignore[return-value]


_ANONYMOUS: dict[str, object] = {}


def _agents_of(principal: Principal | None, address: str) -> tuple[list[dict], list[str]]:
    address = clean(address)
    network = {"address": address, "type": "2" if address[:1].isdigit() or ":" in address else "1"}
    if principal is None:  # no valid token (401): only where it came from
        return [{"type": _dcm("110153", "Source Role ID"), "requestor": True, "network": network}], []
    client_id = clean(principal.client_id or principal.subject)
    client = {"identifier": {"system": "urn:ehr:client-id", "value": client_id}}
    agents = [{"type": _dcm("110153", "Source Role ID"), "who": client, "requestor": principal.fhir_user is None}]
    agents[0]["network"] = network
    keys = [f"urn:ehr:client-id|{client_id}", client_id]
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
        keys.append(user["who"]["reference"])
    return agents, keys


def _dcm(code: str, display: str) -> dict:
    return {"coding": [{"system": DCM, "code": code, "display": display}]}


def _entity(reference: str, entity_type: str, role: str) -> dict:
    return {
        "what": {"reference": reference},
        "type": {"system": ENTITY_TYPE, "code": entity_type},
        "role": {"system": OBJECT_ROLE, "code": role},
    }


def _id_prefix() -> str:
    r = random.getrandbits(62)
    return f"{r >> 30:08x}-{r >> 14 & 0xFFFF:04x}-4{r >> 2 & 0xFFF:03x}-{0x8000 | (r & 0x3) << 12:04x}-"


_ids = [_id_prefix(), 0]  # this process's random UUID prefix, and a counter for the last 12 digits
os.register_at_fork(after_in_child=lambda: _ids.__setitem__(slice(None), [_id_prefix(), 0]))


def new_id() -> str:
    """A unique id: a random prefix of this process (every forked worker draws its own),
    then a counter, in the layout of a random UUID. An event id must be unique, not
    secret; consecutive ids also sit together in the id index."""
    _ids[1] += 1  # type: ignore[operator]
    return f"{_ids[0]}{_ids[1]:012x}"


_second: list[object] = [-1, ""]  # the last whole second formatted, and its text


def _instant(now: float) -> str:
    """`now` as FHIR instant text, UTC, milliseconds (the second's text is reused)."""
    sec = int(now)
    if sec != _second[0]:
        _second[:] = [sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))]
    return f"{_second[1]}.{int((now - sec) * 1000):03d}Z"


def audit_event(interaction: Interaction, principal: Principal | None, address: str) -> Entry:
    """The AuditEvent of one interaction, as JSON bytes ready for the chain, with its search
    columns (the same that audit/index.py `index_of` derives from the content). Built for
    every request, so kept lean: all but its own parts comes serialized from the caller's memo."""
    resource = clean(interaction.resource) if interaction.resource else None
    patients = list(dict.fromkeys([clean(p) for p in interaction.patients]))
    now = time.time()
    caller = _caller(principal, address)
    entities = [_entity(p, "1", "1") for p in patients]  # 1 person, 1 patient
    entity_keys = patients[:]
    if resource and resource not in patients:
        entities.append(_entity(resource, "2", "4"))  # 2 system object, 4 domain resource
        entity_keys.append(resource)
        plain = resource.split("/_history/", 1)[0]
        if plain != resource:
            entity_keys.append(plain)
        if plain.startswith("Patient/"):
            patients.append(plain)
    if interaction.query is not None:
        query = {
            "type": _QUERY_TYPE,
            "role": _QUERY_ROLE,
            "query": base64.b64encode(clean(interaction.query).encode()).decode(),
        }
        entities.append(query)
    code = interaction.code
    action = _ACTIONS.get(code, "R")
    outcome = outcome_code(interaction.status)
    event_id = new_id()
    own: dict[str, object] = {"id": event_id, "recorded": _instant(now)}
    if interaction.description:
        own["outcomeDesc"] = f"{interaction.status} {clean(interaction.description)}"[:1000]
    elif interaction.status >= 400:
        own["outcomeDesc"] = str(interaction.status)
    if entities:
        own["entity"] = entities
    if interaction.break_the_glass:  # the FHIR security labels' BTG, and in words
        own["meta"] = {"security": [{"system": ACT_REASON, "code": "BTG", "display": "break the glass"}]}
        own["outcomeDesc"] = (
            f"{own.get('outcomeDesc', interaction.status)}; break-the-glass overrode a patient's Consent"
        )
    content = caller.head(principal, code, action, outcome) + b"," + orjson.dumps(own)[1:]
    keys = caller.keys
    user = keys[-1] if keys and keys[-1].startswith("Patient/") else None
    index = Index(  # clean() left no separator in them: index.distinct() would change nothing
        list(dict.fromkeys([user, *patients])) if user else list(dict.fromkeys(patients)),
        keys,
        list(dict.fromkeys(entity_keys)),
        code,
        outcome,
        action,
        caller.address,
    )
    return Entry(event_id, datetime.fromtimestamp(now, UTC), content, index)


class ReadTemplate:
    """What every successful read of a Patient by one caller shares (audit_read_template,
    migration 0026): the event's head, READ_EVENT_TAIL, the agents' index keys and the
    address. Its row id, once the database has it, is all a read's statement needs."""

    __slots__ = ("address", "agents", "digest", "head", "id", "tail")

    def __init__(self, head: bytes, agents: list[str], address: str) -> None:
        self.head, self.tail, self.agents, self.address = head, READ_EVENT_TAIL, agents, address
        self.digest = hashlib.sha256(orjson.dumps([head.decode(), self.tail, agents, address])).digest()
        self.id: int | None = None


def read_template(principal: Principal | None, address: str) -> ReadTemplate | None:
    """The caller's template for its reads of a Patient by id (store/sql.py READ_CURRENT_AUDITED
    queues the event's own parts only), built once per caller. None for a caller whose events
    also name a patient of its own (a patient user, a patient context)."""
    if principal is None or principal.patient or (principal.fhir_user or "").startswith("Patient/"):
        return None
    caller = _caller(principal, address)
    if caller.read_template is None:
        caller.read_template = ReadTemplate(caller.head(principal, "read", "R", "0"), caller.keys, caller.address)
    return caller.read_template


# The rest of a read's event, as audit_event writes it, with @ID@, @T@ and @RID@ for SQL to
# put in (the event's id, its time, the Patient's id: audit_read_content, migration 0026);
# tests/audit checks both make one event.
READ_EVENT_TAIL = (
    "," + orjson.dumps({"id": "@ID@", "recorded": "@T@", "entity": [_entity("Patient/@RID@", "1", "1")]}).decode()[1:]
)

_QUERY_TYPE = {"system": ENTITY_TYPE, "code": "2"}
_QUERY_ROLE = {"system": OBJECT_ROLE, "code": "24"}  # 24 query
