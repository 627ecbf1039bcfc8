"""HTTP preconditions: If-Match, If-None-Match, If-Modified-Since, If-None-Exist."""

from __future__ import annotations

import re
from datetime import datetime
from email.utils import parsedate_to_datetime

from starlette.requests import Request

from ..fhir.outcome import FhirError
from ..search.criteria import Criteria, conditional_criteria
from ..store import StoredResource

_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,9})"?\s*$')


def version_from_etag(value: str, header: str) -> int:
    match = _ETAG.match(value)
    if not match:
        raise FhirError.of(400, "invalid", f"malformed {header} header '{value}' (expected W/\"n\")")
    return int(match.group(1))


def if_match(request: Request) -> int | None:
    """The version named by If-Match, or None."""
    value = request.headers.get("if-match")
    return None if value is None else version_from_etag(value, "If-Match")


def not_modified(request: Request, stored: StoredResource) -> bool:
    """True when If-None-Match or If-Modified-Since says the client's copy is current."""
    inm = request.headers.get("if-none-match")
    if inm is not None:
        if inm.strip() == "*":
            return True
        tags = [t for t in inm.split(",") if t.strip()]
        return any(_ETAG.match(t) and int(_ETAG.match(t).group(1)) == stored.version_id for t in tags)
    ims = request.headers.get("if-modified-since")
    if ims is not None:
        try:
            since: datetime = parsedate_to_datetime(ims)
        except (TypeError, ValueError):
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
