"""Write hooks: what a resource type asks of its own writes, beside storing them.

A hook is given to the store per resource type (app.py passes events' Subscription and
SubscriptionTopic hooks; the store never imports events/). Every write path of a hooked
type calls it: create, update, patch, delete, their conditional forms, batch and
transaction entries, and the prepared creates of bundles and import. Types without a
hook pay nothing: no transaction is opened for them that would not be opened anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import asyncpg

from ..auth.principal import Principal
from .model import StoredResource

if TYPE_CHECKING:
    from .repository import ResourceStore

Resource = dict[str, Any]


class WriteHook(Protocol):
    def check(self, principal: Principal, resource: Resource) -> Resource:
        """Before a create, update or patch is written (after validation): raise FhirError
        (4xx) to refuse it; returns the resource to write (possibly changed)."""
        ...

    async def written(
        self, store: ResourceStore, conn: asyncpg.Connection, principal: Principal, stored: StoredResource
    ) -> None:
        """In the write's own transaction, after it (stored.content None: a deletion;
        stored.method None: an update that changed nothing, so wrote no version); store
        is bound to conn. A FhirError raised here rolls the write back."""
        ...


Hooks = dict[str, WriteHook]  # resource type -> its hook
