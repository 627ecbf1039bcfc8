"""What the three asynchronous flows ($export, $import, `Prefer: respond-async`) answer
alike: the kick-off's 202, the 429 when a client has too many open, and the 404 for a
job that is not the caller's. One rule each, so the flows cannot drift apart."""

from __future__ import annotations

from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from ..bulk.caller import owner_of
from ..fhir.outcome import FhirError
from .context import principal_of
from .responses import info_outcome, json_response

Owned = TypeVar("Owned")


def too_many_open(what: str, limit: int, retry_after: int) -> FhirError:
    """429: the client already has `limit` of these queued or running."""
    error = FhirError.of(429, "throttled", f"{limit} {what} of this client are still open: wait or cancel one")
    error.headers["Retry-After"] = str(retry_after)
    return error


def accepted(request: Request, what: str, job_id: object, status_url: str) -> Response:
    """202 Accepted with the status URL in Content-Location (FHIR async pattern)."""
    return json_response(request, info_outcome(f"{what} {job_id} accepted"), 202, {"Content-Location": status_url})


def owned(request: Request, found: Owned | None, what: str, given: str) -> Owned:
    """found, when the caller (client, user and patient context) kicked it off and it is not
    cancelled; else 404, which tells nothing of other clients' jobs."""
    if found is None or found.owner != owner_of(principal_of(request)) or found.status == "cancelled":  # type: ignore[attr-defined]
        raise FhirError.of(404, "not-found", f"no {what} '{given[:100]}'")
    return found
