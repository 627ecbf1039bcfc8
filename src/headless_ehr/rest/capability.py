"""GET /metadata: a CapabilityStatement that says what this server really does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .. import FHIR_VERSION, __version__
from ..fhir.definitions import definitions
from ..search.registry import indexed_token_params

_INTERACTIONS = [
    "read",
    "vread",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
]


def _resource_entry(resource_type: str) -> dict[str, Any]:
    params = [{"name": "_id", "type": "token"}]
    params += [{"name": p.code, "type": p.type, "definition": p.url} for p in indexed_token_params(resource_type)]
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
        "conditionalDelete": "single",
        "searchParam": params,
        "operation": [
            {
                "name": "validate",
                "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
            }
        ],
    }


def capability_statement(base_url: str) -> dict[str, Any]:
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
        "rest": [
            {
                "mode": "server",
                "resource": [_resource_entry(t) for t in sorted(definitions().resource_types)],
                "interaction": [{"code": "history-system"}],
            }
        ],
    }
