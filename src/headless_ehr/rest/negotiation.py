"""Content negotiation, request bodies and the Prefer header."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ..fhir import json as fhir_json
from ..fhir.outcome import FhirError

FHIR_JSON = "application/fhir+json"
JSON_TYPES = frozenset({FHIR_JSON, "application/json", "text/json", "application/json+fhir"})
_FORMAT_ALIASES = {"json": FHIR_JSON, "application/json": "application/json"}
_XML = frozenset({"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir"})
_WILDCARDS = frozenset({"*/*", "application/*", ""})


def _media(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def response_media_type(request: Request) -> str:
    """The JSON flavour to answer with, from _format or Accept; 406 for anything else."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        fmt = fmt.strip().lower().replace(" ", "+")
        if fmt in _FORMAT_ALIASES:
            return _FORMAT_ALIASES[fmt]
        if _media(fmt) in JSON_TYPES:
            return FHIR_JSON if _media(fmt) != "application/json" else "application/json"
        what = "XML is not supported yet" if fmt in _XML else f"unsupported _format '{fmt}'"
        raise FhirError.of(406, "not-supported", what)
    accept = request.headers.get("accept")
    if not accept:
        return FHIR_JSON
    acceptable = [_media(part) for part in accept.split(",")]
    for media in acceptable:
        if media in (FHIR_JSON, "application/json+fhir"):
            return FHIR_JSON
        if media == "application/json":
            return "application/json"
        if media in _WILDCARDS or media == "text/json":
            return FHIR_JSON
    raise FhirError.of(406, "not-supported", f"cannot produce any of: {accept} (this server speaks {FHIR_JSON})")


def wants_native(request: Request) -> bool:
    """For a Binary read: whether the client asked for the content itself rather than a FHIR resource.

    R4 binary.html#rest: an Accept that is not a FHIR format gets the raw bytes. The first concrete
    media type in Accept decides; _format, a FHIR type, or only wildcards (`*/*`) mean the resource.
    """
    if "_format" in request.query_params:
        return False
    for part in (request.headers.get("accept") or "").split(","):
        media = _media(part)
        if media in _WILDCARDS:
            continue
        return media not in JSON_TYPES and media not in _XML
    return False


def native_content_type(request: Request) -> str | None:
    """The Content-Type of a body that is not a FHIR resource (a Binary's own content), else None."""
    content_type = request.headers.get("content-type")
    if not content_type:
        return None
    media = _media(content_type)
    return None if media in JSON_TYPES or media in _XML else content_type.strip()


def require_json_content(request: Request, *extra: str) -> str:
    """The request's media type, which must be FHIR JSON (or one of extra); else 415."""
    content_type = request.headers.get("content-type")
    if not content_type:
        raise FhirError.of(415, "not-supported", f"a body needs Content-Type {FHIR_JSON}")
    media = _media(content_type)
    if media not in JSON_TYPES and media not in extra:
        raise FhirError.of(415, "not-supported", f"unsupported Content-Type '{content_type}'; use {FHIR_JSON}")
    return media


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than limit bytes with 413 before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise FhirError.of(400, "invalid", "malformed Content-Length")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> FhirError:
    return FhirError.of(413, "too-costly", f"the request body exceeds the limit of {limit} bytes")


async def read_resource(request: Request, limit: int) -> Any:
    """Parse a FHIR JSON body; 415/413/400 for the wrong type, size or syntax."""
    return parse_resource(await read_json_body(request, limit))


async def read_json_body(request: Request, limit: int) -> bytes:
    """The unparsed body of a request that must be FHIR JSON (415/413 otherwise)."""
    require_json_content(request)
    return await read_body(request, limit)


def parse_resource(body: bytes) -> Any:
    """A FHIR JSON body parsed; 400 for bad syntax or anything but a JSON object."""
    if not body.strip():
        raise FhirError.of(400, "structure", "the request body is empty")
    try:
        parsed = fhir_json.loads(body)
    except fhir_json.JsonError as exc:
        raise FhirError.of(400, "structure", str(exc)) from None
    if not isinstance(parsed, dict):
        raise FhirError.of(400, "structure", "the body must be a JSON object (a FHIR resource)")
    return parsed


def prefer(request: Request) -> dict[str, str]:
    """The Prefer header as a dict, e.g. {'return': 'minimal', 'handling': 'strict'}."""
    header = request.headers.get("prefer")
    out: dict[str, str] = {}
    if header:
        for part in header.replace(";", ",").split(","):
            key, _, value = part.strip().partition("=")
            if key:
                out[key.lower()] = value.strip().strip('"')
    return out
