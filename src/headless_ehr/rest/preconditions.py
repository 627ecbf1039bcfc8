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


def validator_matches(request: Request, etag: str, last_modified: datetime) -> bool:
    """If-None-Match / If-Modified-Since against a representation that has no version id (e.g. /metadata)."""
    inm = request.headers.get("if-none-match")
    if inm is not None:
        weak = etag.removeprefix("W/")
        return any(t.strip() in ("*", etag, weak) or t.strip().removeprefix("W/") == weak for t in inm.split(","))
    ims = request.headers.get("if-modified-since")
    if ims is not None:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        return since.tzinfo is not None and last_modified.replace(microsecond=0) <= since
    return False


def if_none_exist(request: Request, resource_type: str) -> Criteria | None:
    """Search criteria of a conditional create, from If-None-Exist."""
    value = request.headers.get("if-none-exist")
    return None if value is None else conditional_criteria(resource_type, value, "create")
