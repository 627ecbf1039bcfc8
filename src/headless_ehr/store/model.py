"""Values the store returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..fhir.outcome import Issue


@dataclass(frozen=True, slots=True)
class StoredResource:
    """One version of a resource as stored; content is None for a deletion."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    content: bytes | None
    method: str | None = None  # set on history entries: POST | PUT | PATCH | DELETE
    # set on a contained resource returned by `_containedType=contained`: its container's
    # `Type/id` (id is then its local id, version and instant the container's)
    container: str | None = None

    @property
    def deleted(self) -> bool:
        return self.content is None


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What a create/update did: `created` decides 201 vs 200; `matched` marks a
    conditional create that found an existing resource and wrote nothing."""

    stored: StoredResource
    created: bool
    matched: bool = False


@dataclass(slots=True)
class HistoryPage:
    entries: list[StoredResource]
    next_cursor: str | None
    total: int | None = None
    # every version below this instant is settled: one that commits later is not older
    settled: datetime | None = None


@dataclass(slots=True)
class SearchPage:
    entries: list[StoredResource]
    total: int | None
    next_cursor: str | None
    previous_cursor: str | None
    issues: list[Issue] = field(default_factory=list)
    included: list[StoredResource] = field(default_factory=list)
    request: Any = None  # the parsed SearchRequest (summary, elements, ...)
