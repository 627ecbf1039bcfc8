"""HTTP preconditions: If-Match, If-None-Match, If-Modified-Since, If-None-Exist."""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime

from starlette.requests import Request

from ..fhir.outcome import FhirError
from ..search.criteria import Criteria, conditional_criteria
from ..store import StoredResource
from ..store.etag import Versions, matches, parse_etags


def if_match(request: Request) -> Versions | None:
    """The versions If-Match names (`*`, or a list of ETags), or None."""
    value = request.headers.get("if-match")
    return None if value is None else parse_etags(value, "If-Match")


def _unmodified_since(request: Request, last_modified: datetime) -> bool:
    """If-Modified-Since says the client's copy is current (HTTP dates have whole seconds)."""
    ims = request.headers.get("if-modified-since")
    if ims is None:
        return False
    try:
        since: datetime = parsedate_to_datetime(ims)
    except (TypeError, ValueError, IndexError, OverflowError):
        return False  # RFC 9110: an invalid date is ignored
    return since.tzinfo is not None and last_modified.replace(microsecond=0) <= since


def not_modified(request: Request, stored: StoredResource) -> bool:
    """True when If-None-Match or If-Modified-Since says the client's copy is current."""
    inm = request.headers.get("if-none-match")
    if inm is None:  # RFC 9110 §13.1.3: If-Modified-Since only counts without If-None-Match
        return _unmodified_since(request, stored.last_updated)
    try:
        return matches(parse_etags(inm, "If-None-Match"), stored.version_id)
    except FhirError:
        return False  # a tag we cannot read matches nothing: the client gets the resource


def validator_matches(request: Request, etag: str, last_modified: datetime) -> bool:
    """not_modified() for a representation with an opaque ETag and no version id (e.g. /metadata)."""
    inm = request.headers.get("if-none-match")
    if inm is None:
        return _unmodified_since(request, last_modified)
    weak = etag.removeprefix("W/")
    return any(t.strip() in ("*", etag, weak) or t.strip().removeprefix("W/") == weak for t in inm.split(","))


def if_none_exist(request: Request, resource_type: str) -> Criteria | None:
    """Search criteria of a conditional create, from If-None-Exist."""
    value = request.headers.get("if-none-exist")
    return None if value is None else conditional_criteria(resource_type, value, "create")
