"""What a request runs with: the store on the request's own base, and the caller."""

from __future__ import annotations

from starlette.requests import Request

from ..auth.principal import Principal
from ..store import ResourceStore
from .responses import base_url


def store_of(request: Request) -> ResourceStore:
    """The store, for this request's base (its absolute references under it are local)."""
    return request.app.state.store.on_base(base_url(request))


def principal_of(request: Request) -> Principal:
    return request.state.principal
