"""HTTP preconditions: If-Match, If-None-Match, If-Modified-Since, If-None-Exist."""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl

from starlette.requests import Request

from ..fhir.outcome import FhirError
from ..store import StoredResource
from ..store.etag import Versions, matches, parse_etags


def if_match(request: Request) -> Versions | None:
    """The versions If-Match names (`*`, or a list of ETags), or None."""
    value = request.headers.get("if-match")
    return None if value is None else parse_etags(value, "If-Match")


def not_modified(request: Request, stored: StoredResource) -> bool:
    """True when If-None-Match or If-Modified-Since says the client's copy is current."""
    inm = request.headers.get("if-none-match")
    if inm is not None:
        try:
            return matches(parse_etags(inm, "If-None-Match"), stored.version_id)
        except FhirError:
            return False  # a tag we cannot read matches nothing: the client gets the resource
    ims = request.headers.get("if-modified-since")
    if ims is not None:
        try:
            since: datetime = parsedate_to_datetime(ims)
        except (TypeError, ValueError, IndexError, OverflowError):
            return False  # RFC 9110: an invalid date is ignored
        if since.tzinfo is None:
            return False
        return stored.last_updated.replace(microsecond=0) <= since
    return False


def if_none_exist(request: Request) -> list[tuple[str, str]] | None:
    """Search criteria of a conditional create, from If-None-Exist."""
    value = request.headers.get("if-none-exist")
    if value is None:
        return None
    query = value.split("?", 1)[1] if "?" in value else value
    criteria = parse_qsl(query, keep_blank_values=True)
    if not criteria:
        raise FhirError.of(400, "invalid", f"If-None-Exist has no search criteria: '{value}'")
    return criteria
