"""GET /metadata: a CapabilityStatement that says what this server really does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .. import FHIR_VERSION, __version__
from ..fhir.definitions import definitions
from ..search.registry import search_params

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
_OPERATIONS = [
    ("validate", "http://hl7.org/fhir/OperationDefinition/Resource-validate"),
    ("reindex", "urn:headless-ehr:operation:reindex"),
]


def _search_param_entries(resource_type: str) -> list[dict[str, Any]]:
    out = [{"name": name, "type": kind} for name, kind in _COMMON]
    for param in sorted(search_params(resource_type).values(), key=lambda p: p.code):
        if param.type == "special" or param.code in ("_id", "_lastUpdated", "_text", "_content"):
            continue
        out.append({"name": param.code, "definition": param.url, "type": param.type})
    return out


def _resource_entry(resource_type: str, conditional_delete: str) -> dict[str, Any]:
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
        "operation": [{"name": name, "definition": url} for name, url in _OPERATIONS],
    }


def capability_statement(base_url: str, conditional_delete: str = "single") -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "publisher": "headless-ehr",
        "kind": "instance",
        "software": {"name": "headless-ehr", "version": __version__},
        "implementation": {"description": "Headless EHR FHIR R4 server", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "resource": [_resource_entry(t, conditional_delete) for t in sorted(definitions().resource_types)],
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "search-system"},
                    {"code": "history-system"},
                ],
                "searchParam": [{"name": name, "type": kind} for name, kind in _COMMON[:2]],
                "operation": [{"name": "reindex", "definition": _OPERATIONS[1][1]}],
            }
        ],
    }
