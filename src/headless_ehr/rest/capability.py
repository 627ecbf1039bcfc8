"""GET /metadata: a CapabilityStatement that says what this server really does."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .. import FHIR_VERSION, __version__
from ..auth.tokens import issuer_of
from ..config import Settings
from ..fhir import json as fhir_json
from ..fhir.definitions import definitions
from ..search.registry import CUSTOM, NEAR_URL, search_params
from .websocket import websocket_url

# The statement changes only with the software, its settings and the registered
# SearchParameters, so it is dated by the process start.
_STARTED = datetime.now(UTC).replace(microsecond=0)

_INTERACTIONS = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
]
_COMMON = [
    ("_id", "token"),
    ("_lastUpdated", "date"),
    ("_text", "string"),
    ("_content", "string"),
    ("_list", "token"),
    ("_has", "special"),
]
# What each parameter type accepts beyond plain values (R4's searchParam has no modifier list).
_MODIFIER_DOCS = {
    "token": "Modifiers: :missing :not :text :exact :of-type; :in :not-in :above :below on shipped terminology",
    "uri": "Modifiers: :missing :exact :above :below (by path segment); url|version, with :above/:below on the version",
    "reference": "Modifiers: :missing :identifier :[type]; :above/:below on canonical URLs and url|version",
    "special": "near=latitude|longitude|distance|units (km, m, mi, [mi_i]; km when omitted; 10 km without a distance)",
}
_OPERATIONS = [
    ("validate", "http://hl7.org/fhir/OperationDefinition/Resource-validate"),
    ("reindex", "urn:headless-ehr:operation:reindex"),
]
# the Subscriptions Backport IG 1.1's operations (rest/operations/subscription_*.py, ws_binding_token.py)
_BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition"
_SUBSCRIPTION_OPERATIONS = [
    ("status", f"{_BACKPORT}/backport-subscription-status"),
    ("events", f"{_BACKPORT}/backport-subscription-events"),
    ("get-ws-binding-token", f"{_BACKPORT}/backport-subscription-get-ws-binding-token"),
]
# where the WebSocket channel of Subscriptions is (R4 capabilitystatement-websocket)
WEBSOCKET_EXTENSION = "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket"
# Bulk Data Access 2.0.0 $export (rest/operations/export.py): system, Patient and Group level
_BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
_EXPORTS = {
    None: {"name": "export", "definition": _BULK + "export"},
    "Patient": {"name": "export", "definition": _BULK + "patient-export"},
    "Group": {"name": "export", "definition": _BULK + "group-export"},
}


def _search_param_entries(resource_type: str) -> list[dict[str, Any]]:
    out = [{"name": name, "type": kind} for name, kind in _COMMON]
    for param in sorted(search_params(resource_type).values(), key=lambda p: p.code):
        if (param.type == "special" and param.url != NEAR_URL) or param.code in (
            "_id",
            "_lastUpdated",
            "_text",
            "_content",
        ):
            continue
        entry = {"name": param.code, "definition": param.url, "type": param.type}
        if param.type in _MODIFIER_DOCS:
            entry["documentation"] = _MODIFIER_DOCS[param.type]
        out.append(entry)
    return out


_AUDIT_PARAMS = ("patient", "agent", "entity", "subtype", "outcome", "action", "address", "date")


def _audit_entry() -> dict[str, Any]:
    """AuditEvents come from the audit trail (rest/audit_search.py): read and search only."""
    params = search_params("AuditEvent")
    return {
        "type": "AuditEvent",
        "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
        "documentation": "the audit trail: append-only (create, update, patch and delete answer 405);"
        " system clients read every event, patient-context tokens their own patient's",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "conditionalDelete": "not-supported",  # no write of an AuditEvent is supported
        "searchParam": [
            {"name": "_id", "type": "token"},
            *({"name": n, "definition": params[n].url, "type": params[n].type} for n in _AUDIT_PARAMS if n in params),
        ],
    }


def _resource_entry(resource_type: str, conditional_delete: str) -> dict[str, Any]:
    if resource_type == "AuditEvent":
        return _audit_entry()
    return {
        "type": resource_type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
        "interaction": [{"code": code} for code in _INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": True,
        "conditionalDelete": conditional_delete,  # EHR_CONDITIONAL_DELETE: single | multiple
        "referencePolicy": ["literal", "logical", "local"],
        "searchInclude": ["*"],
        "searchRevInclude": ["*"],
        "searchParam": _search_param_entries(resource_type),
        "operation": [
            {"name": name, "definition": url}
            for name, url in _OPERATIONS + (_SUBSCRIPTION_OPERATIONS if resource_type == "Subscription" else [])
        ]
        + ([_EXPORTS[resource_type]] if resource_type in _EXPORTS else []),
    }


SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
AUTH_OFF = (
    "Authorisation is OFF (EHR_AUTH=off): no access token is asked for and every request acts as the"
    " system, with every right. For local experiments and benchmarks only; never use it with real data."
)


def _security(base_url: str, auth: bool, base_path: str, trusted_issuer: str | None) -> dict[str, Any]:
    """rest.security: SMART on FHIR (App Launch 2.2 conformance.html) with its endpoints, or the warning."""
    if not auth:
        return {"description": AUTH_OFF}
    origin = issuer_of(base_url, base_path)  # the authorisation server: the tokens' `iss`
    endpoints = {
        "authorize": "/oauth/authorize",
        "token": "/oauth/token",
        "introspect": "/oauth/introspect",
        "revoke": "/oauth/revoke",
        "register": "/admin/clients",
    }
    description = (
        "SMART on FHIR (App Launch 2.2): every request but GET metadata needs a bearer access token;"
        f" discovery at {base_url}/.well-known/smart-configuration."
    )
    if trusted_issuer:
        description += f" Access tokens issued by {trusted_issuer} are accepted too."
    return {
        "extension": [
            {
                "url": OAUTH_URIS,
                "extension": [{"url": name, "valueUri": origin + path} for name, path in endpoints.items()],
            }
        ],
        "service": [
            {
                "coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }
        ],
        "description": description,
    }


def capability_statement(
    base_url: str,
    conditional_delete: str = "single",
    *,
    auth: bool = True,
    base_path: str = "/fhir",
    trusted_issuer: str | None = None,
) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _STARTED.isoformat(),
        "publisher": "headless-ehr",
        "kind": "instance",
        "software": {"name": "headless-ehr", "version": __version__},
        "implementation": {"description": "Headless EHR FHIR R4 server", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [
            {
                "extension": [{"url": WEBSOCKET_EXTENSION, "valueUri": websocket_url(base_url)}],
                "mode": "server",
                "security": _security(base_url, auth, base_path, trusted_issuer),
                "resource": [_resource_entry(t, conditional_delete) for t in sorted(definitions().resource_types)],
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "search-system"},
                    {"code": "history-system"},
                ],
                "searchParam": [{"name": name, "type": kind} for name, kind in _COMMON[:2]],
                "operation": [{"name": "reindex", "definition": _OPERATIONS[1][1]}, _EXPORTS[None]],
            }
        ],
    }
    if not auth:  # R4 orders description after publisher/contact; key order is not significant in JSON
        statement["description"] = AUTH_OFF
    return statement


@dataclass(frozen=True)
class CapabilityDocument:
    statement: dict[str, Any]
    body: bytes
    etag: str  # a weak validator of the body
    last_modified: datetime


_documents: dict[tuple[object, ...], CapabilityDocument] = {}


def settings_document(base_url: str, settings: Settings) -> CapabilityDocument:
    """capability_document with what the settings change in it."""
    return capability_document(
        base_url,
        settings.conditional_delete,
        auth=settings.auth,
        base_path=settings.base_path,
        trusted_issuer=settings.trusted_issuer,
    )


def capability_document(
    base_url: str,
    conditional_delete: str = "single",
    *,
    auth: bool = True,
    base_path: str = "/fhir",
    trusted_issuer: str | None = None,
) -> CapabilityDocument:
    """The CapabilityStatement for base_url (its security endpoints are under the same origin),
    built once per registry state and settings (it is ~400 kB)."""
    key = (base_url, conditional_delete, auth, base_path, trusted_issuer, CUSTOM.stamp)
    found = _documents.get(key)
    if found is None:
        statement = capability_statement(
            base_url, conditional_delete, auth=auth, base_path=base_path, trusted_issuer=trusted_issuer
        )
        body = fhir_json.dumps(statement)
        digest = hashlib.sha256(body).hexdigest()[:20]
        changed = CUSTOM.stamp is not None
        modified = datetime.now(UTC).replace(microsecond=0) if changed else _STARTED
        if len(_documents) > 16:  # hosts and registry states seen; keep the cache bounded
            _documents.clear()
        found = _documents[key] = CapabilityDocument(statement, body, f'W/"{digest}"', modified)
    return found
