"""Binary's own REST rules (R4 binary.html#rest): its content in and out as raw bytes.

A read whose Accept is not a FHIR format answers with the decoded `data` and the stored
`contentType`; a POST or PUT whose Content-Type is not a FHIR format stores the body as
a Binary. The Binary's securityContext travels in the X-Security-Context header.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..fhir import json as fhir_json
from ..fhir.outcome import FhirError
from ..store import StoredResource
from .negotiation import read_body

SECURITY_CONTEXT = "X-Security-Context"


def native_response(stored: StoredResource, headers: dict[str, str]) -> Response:
    """The Binary's decoded content with its own Content-Type."""
    binary: dict[str, Any] = fhir_json.loads(stored.content)
    try:
        data = base64.b64decode(binary.get("data") or "", validate=True)
    except (binascii.Error, ValueError):
        raise FhirError.of(500, "exception", f"Binary/{stored.id} holds data that is not base64") from None
    reference = (binary.get("securityContext") or {}).get("reference")
    if isinstance(reference, str) and reference.isascii() and reference.isprintable():
        headers = {**headers, SECURITY_CONTEXT: reference}
    # R4 requires contentType; a stored Binary without one is served as opaque bytes
    media = binary.get("contentType") or "application/octet-stream"
    return Response(data, status_code=200, headers=headers, media_type=media)


async def binary_from_body(request: Request, content_type: str, limit: int, rid: str | None) -> dict[str, Any]:
    """A Binary resource holding the request body as content (a POST or PUT of non-FHIR content)."""
    body = await read_body(request, limit)
    binary: dict[str, Any] = {"resourceType": "Binary"}
    if rid is not None:
        binary["id"] = rid
    binary["contentType"] = content_type
    context = request.headers.get(SECURITY_CONTEXT)
    if context:
        binary["securityContext"] = {"reference": context.strip()}
    if body:
        binary["data"] = base64.b64encode(body).decode("ascii")
    return binary
