"""Every official R4 example is accepted, stored and read back equal apart from meta.

Examples that are themselves invalid are named, with the reason, in
`KNOWN_INVALID_EXAMPLES` (shared with the validator's own corpus test); for those
the server must answer 422, never store them, and never fail with a 500.
"""

from __future__ import annotations

from pathlib import Path

from headless_ehr.fhir import json as fhir_json
from tests.fhir.test_validation_corpus import KNOWN_INVALID_EXAMPLES

FHIR_JSON = "application/fhir+json"

# Valid resources that the server refuses to store (400) by its SearchParameter rules
# (search/custom.py): registered on $reindex, they would break search.
REFUSED_SEARCH_PARAMETERS = {
    "SearchParameter-example-extension.json": "base Patient, but the expression starts at DocumentReference",
    "SearchParameter-example-reference.json": "redefines the R4 parameter Condition subject",
}


# Subscriptions whose status the server sets (events/lifecycle.py): both examples' `end`
# (2021) has passed, so they are stored `off`.
SERVER_SET_STATUS = {"Subscription-example.json": "off", "Subscription-example-error.json": "off"}


def _without_server_meta(resource: dict) -> tuple[str, dict, dict]:
    """(resourceType, client meta, the rest in its original order): the server puts
    resourceType, id and meta first and owns meta.versionId/lastUpdated."""
    meta = resource.get("meta") or {}
    client_meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
    rest = {k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")}
    return resource["resourceType"], client_meta, rest


def _example_files(shared: Path) -> list[Path]:
    return sorted((shared / "examples-r4").glob("*.json"))


async def test_every_example_round_trips(client, shared_fhir):
    files = _example_files(shared_fhir)
    assert len(files) > 600
    failures: list[str] = []
    accepted = audit_events = 0
    for path in files:
        raw = path.read_bytes()
        original = fhir_json.loads(raw)
        rtype, rid = original["resourceType"], original.get("id")
        if rid:
            res = await client.put(f"/{rtype}/{rid}", content=raw, headers={"Content-Type": FHIR_JSON})
        else:
            res = await client.post(f"/{rtype}", content=raw, headers={"Content-Type": FHIR_JSON})
        if rtype == "AuditEvent":  # the audit trail is written by the server only (tests/audit)
            if res.status_code != 405:
                failures.append(f"{path.name}: an AuditEvent write answered {res.status_code}, not 405")
            audit_events += 1
            continue
        if path.name in KNOWN_INVALID_EXAMPLES:
            if res.status_code != 422:
                failures.append(f"{path.name}: known invalid but answered {res.status_code}")
            continue
        if path.name in REFUSED_SEARCH_PARAMETERS:
            if res.status_code != 400:
                failures.append(f"{path.name}: a refused SearchParameter but answered {res.status_code}")
            continue
        if res.status_code not in (200, 201):
            failures.append(f"{path.name}: {res.status_code} {res.text[:300]}")
            continue
        accepted += 1
        stored_id = fhir_json.loads(res.content)["id"]
        read = await client.get(f"/{rtype}/{stored_id}")
        if read.status_code != 200:
            failures.append(f"{path.name}: read back {read.status_code}")
            continue
        # byte-level comparison of the re-serialised forms: decimals keep their text
        got = fhir_json.dumps(_without_server_meta(fhir_json.loads(read.content)))
        if path.name in SERVER_SET_STATUS:
            original["status"] = SERVER_SET_STATUS[path.name]
        want = fhir_json.dumps(_without_server_meta(original))
        if got != want:
            failures.append(f"{path.name}: read back differs")
    assert not failures, "\n".join(failures[:50])
    refused = (KNOWN_INVALID_EXAMPLES.keys() | REFUSED_SEARCH_PARAMETERS.keys()) & {p.name for p in files}
    assert accepted == len(files) - len(refused) - audit_events
