"""$validate: validate a resource without storing it (http://hl7.org/fhir/R4/resource-operation-validate.html).

The answer is 200 with an OperationOutcome whether or not the resource is valid;
a 4xx means the validation could not be performed (unreadable body, unknown type).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ...auth.principal import Principal
from ...fhir.outcome import FhirError, Issue, operation_outcome
from ...store import ResourceStore
from .. import offload
from ..negotiation import parse_resource, read_json_body
from ..responses import json_response

_MODES = frozenset({"create", "update", "delete"})


def _unwrap(body: dict[str, Any]) -> tuple[Any, str | None]:
    """The resource to validate and the mode, from a bare resource or a Parameters."""
    if body.get("resourceType") != "Parameters":
        return body, None
    resource, mode = None, None
    for param in body.get("parameter") or []:
        if not isinstance(param, dict):
            continue
        if param.get("name") == "resource":
            resource = param.get("resource")
        elif param.get("name") == "mode":
            mode = param.get("valueCode")
    if resource is None and mode != "delete":
        return body, mode  # a Parameters resource to be validated as itself
    return resource, mode


def _require_rights(principal: Principal, resource_type: str, mode: str | None) -> None:
    """$validate answers for one type: the caller needs the write right the mode names
    (create or update when none is named), checked before the body is read."""
    if mode in ("create", "update", "delete"):
        principal.require(mode, resource_type)
    elif not principal.allows("update", resource_type):
        principal.require("create", resource_type)


async def validate(request: Request, resource_type: str, rid: str | None = None) -> Response:
    mode = request.query_params.get("mode")
    _require_rights(request.state.principal, resource_type, mode if mode in _MODES else None)
    body = await read_json_body(request, request.app.state.settings.max_body_bytes)

    async def work(store: ResourceStore, _: object) -> Response:  # a deep validation is CPU work
        return await _validate(request, store, parse_resource(body), resource_type, rid)

    return await offload.run(request, len(body), work)


async def _validate(request: Request, store: ResourceStore, body: Any, resource_type: str, rid: str | None) -> Response:
    resource, mode = _unwrap(body)
    mode = request.query_params.get("mode", mode)
    if mode is not None and mode not in _MODES:
        raise FhirError.of(400, "invalid", f"unsupported $validate mode '{mode}'")
    _require_rights(request.state.principal, resource_type, mode)  # a mode named in the Parameters body
    issues: list[Issue] = []
    if mode == "delete":
        if rid is None:
            raise FhirError.of(400, "invalid", "mode=delete needs an instance ($validate on Type/id)")
        await store.read(request.state.principal, resource_type, rid)
        return json_response(request, operation_outcome(issues))
    try:
        issues.extend(store.check(resource, resource_type))
    except FhirError as exc:
        issues.extend(exc.issues)
    if isinstance(resource, dict):
        if rid is not None and resource.get("id") not in (None, rid):
            issues.append(Issue("error", "invalid", f"id does not match the URL id '{rid}'", "id"))
        if mode == "update" and resource.get("id") is None:
            issues.append(Issue("error", "required", "an update must carry the resource id", "id"))
    return json_response(request, operation_outcome(issues))
