"""An operation's input parameters: the query string of a GET, the query string and a
`Parameters` body of a POST (R4 operations.html#request), as (name, value) pairs."""

from __future__ import annotations

from starlette.requests import Request

from ...fhir.outcome import FhirError
from ..negotiation import parse_resource, read_json_body

MAX_ARGUMENTS = 100  # parameters an operation reads, at most


async def operation_arguments(request: Request, known: frozenset[str]) -> list[tuple[str, str]]:
    """The primitive input parameters by name, in order; 400 for a name not in `known`,
    for a non-primitive value, or beyond MAX_ARGUMENTS."""
    pairs = [(k, v) for k, v in request.query_params.multi_items() if k not in ("_format", "_pretty")]
    has_body = request.headers.get("content-length") not in (None, "0") or "transfer-encoding" in request.headers
    if request.method == "POST" and has_body:
        body = parse_resource(await read_json_body(request, request.app.state.settings.max_body_bytes))
        if body.get("resourceType") != "Parameters":
            raise FhirError.of(400, "invalid", "the body of an operation must be a Parameters resource")
        for param in body.get("parameter") or []:
            if not isinstance(param, dict) or not isinstance(param.get("name"), str):
                raise FhirError.of(400, "invalid", "each Parameters.parameter needs a name", "Parameters.parameter")
            values = [v for k, v in param.items() if k.startswith("value")]
            if len(values) != 1 or not isinstance(values[0], str | int | bool):
                raise FhirError.of(400, "invalid", f"parameter '{param['name']}' needs one primitive value[x]")
            value = values[0]
            pairs.append((param["name"], str(value).lower() if isinstance(value, bool) else str(value)))
    unknown = sorted({k for k, _ in pairs if k not in known})
    if unknown:
        raise FhirError.of(400, "not-supported", f"unknown parameter(s): {', '.join(unknown)[:200]}")
    if len(pairs) > MAX_ARGUMENTS:
        raise FhirError.of(400, "too-costly", f"at most {MAX_ARGUMENTS} parameters")
    return pairs


def single(pairs: list[tuple[str, str]], name: str) -> str | None:
    """The one value of a parameter (None when absent); 400 when repeated."""
    values = [v for k, v in pairs if k == name]
    if len(values) > 1:
        raise FhirError.of(400, "invalid", f"parameter '{name}' may be given once")
    return values[0] if values else None


def listed(pairs: list[tuple[str, str]], name: str) -> list[str]:
    """Every value of a repeatable parameter, comma lists split, in order, once each."""
    values = (part.strip() for k, v in pairs if k == name for part in v.split(","))
    return list(dict.fromkeys(v for v in values if v))
