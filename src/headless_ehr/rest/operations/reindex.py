"""$reindex: re-extract search index rows (system, type or instance level).

POST at system or type level starts a background job and answers 202 Accepted with
the job's status URL in Content-Location; GET `$reindex?job=ID` reports progress as
a Parameters resource. At instance level the work is done before answering.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ...fhir.outcome import FhirError
from ...store.reindex import Reindexer, reindex_resource
from ..responses import base_url, info_outcome, json_response


def _reindexer(request: Request) -> Reindexer:
    return request.app.state.reindexer


async def start(request: Request, resource_type: str | None, rid: str | None) -> Response:
    principal = request.state.principal
    principal.require_system("$reindex")  # rewrites every node's index: never a user's call
    principal.require("update", resource_type or "*")
    base = base_url(request)  # absolute references under it are local, as on write
    if rid is not None:
        assert resource_type is not None
        if not await reindex_resource(request.app.state.pool, resource_type, rid, base):
            raise FhirError.of(404, "not-found", f"{resource_type}/{rid} is not known or deleted")
        return json_response(request, info_outcome(f"reindexed {resource_type}/{rid}"))
    types = [resource_type] if resource_type else None
    job_id = await _reindexer(request).start(types, base)
    status_url = f"{base}/$reindex?job={job_id}"
    body = _parameters({"job": job_id, "status": "running"})
    return json_response(request, body, 202, {"Content-Location": status_url})


async def status(request: Request) -> Response:
    request.state.principal.require_system("$reindex")
    job_id = request.query_params.get("job")
    if not job_id:
        raise FhirError.of(400, "required", "GET $reindex needs ?job=<id> (from Content-Location)")
    job = await _reindexer(request).status(job_id)
    if job is None:
        raise FhirError.of(404, "not-found", f"no reindex job {job_id}")
    progress = job["progress"]
    values: dict[str, Any] = {
        "job": job_id,
        "status": job["status"],
        "processed": progress.get("processed", 0),
        "total": progress.get("total"),
    }
    if job["error"]:
        values["error"] = job["error"]
    return json_response(request, _parameters(values))


def _parameters(values: dict[str, Any]) -> dict[str, Any]:
    params = []
    for name, value in values.items():
        if value is None:
            continue
        key = "valueInteger" if isinstance(value, int) else "valueString"
        params.append({"name": name, key: value})
    return {"resourceType": "Parameters", "parameter": params}
