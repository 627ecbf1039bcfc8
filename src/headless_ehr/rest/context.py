"""What a request runs with: the store on the request's own base, and the caller."""

from __future__ import annotations

import asyncpg
from starlette.requests import Request

from ..auth.principal import Principal
from ..store import ResourceStore
from .responses import base_url


def store_of(request: Request) -> ResourceStore:
    """The store, for this request's base (its absolute references under it are local)."""
    return request.app.state.store.on_base(base_url(request))


def principal_of(request: Request) -> Principal:
    return request.state.principal


# Set in the scope of an asynchronous request replayed by its worker (rest/asynchronous.py),
# never by a client: the Principal it was accepted with, the connection whose transaction
# holds its writes and its completion, and the completion itself (for a large body, whose
# work runs in a worker thread on a connection of its own: rest/offload.py).
REPLAY_PRINCIPAL = "ehr.replay_principal"
REPLAY_CONNECTION = "ehr.replay_connection"
REPLAY_COMPLETION = "ehr.replay_completion"


class ReplayAbandoned(Exception):
    """A replayed request's completion refused it (cancelled, taken over, answer too
    large): its transaction rolls back; the completion knows why."""


def replay_connection(request: Request) -> asyncpg.Connection | None:
    """The connection an asynchronous request's writes go through (None: a live request)."""
    return request.scope.get(REPLAY_CONNECTION)
