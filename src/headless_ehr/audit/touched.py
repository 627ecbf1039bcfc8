"""The patients a request touched, looked up for a whole batch of events at once.

A read or search that returned resources other than Patients names, in its event, every
patient those resources reference (the store reports what it returned: audit/pending.py
`returned`). One query per batch of events finds them, in the recorder, off the request's
own work: the request still waits for its batch to commit (audit/recorder.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from ..auth.principal import Principal
from .chain import RETRYABLE, Entry
from .event import Interaction, audit_event

log = logging.getLogger("headless_ehr.audit")
_PATIENTS = (
    "SELECT resource_type, resource_id, array_agg(DISTINCT target_id) AS patients FROM search_reference"
    " WHERE (resource_type, resource_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
    " AND target_type = 'Patient' AND target_id <> '' GROUP BY resource_type, resource_id"
)


@dataclass
class Draft:
    """An event waiting for the patients of the resources its request returned."""

    interaction: Interaction
    principal: Principal | None
    address: str
    returned: list[tuple[str, str]]  # (Type, id) of returned resources other than Patients

    def entry(self, patients: dict[tuple[str, str], list[str]]) -> Entry:
        found = [f"Patient/{p}" for key in self.returned for p in patients.get(key, ())]
        self.interaction.patients = list(dict.fromkeys([*self.interaction.patients, *found]))
        return audit_event(self.interaction, self.principal, self.address)


async def complete(conn: asyncpg.Connection, items: Sequence[Entry | Draft]) -> list[Entry]:
    """The batch's entries, drafts completed with one lookup for all of them."""
    keys = list(dict.fromkeys(k for d in items if isinstance(d, Draft) for k in d.returned))
    patients: dict[tuple[str, str], list[str]] = {}
    if keys:
        try:
            rows = await conn.fetch(_PATIENTS, [k[0] for k in keys], [k[1] for k in keys])
            patients = {(r["resource_type"], r["resource_id"]): sorted(r["patients"]) for r in rows}
        except RETRYABLE:
            raise
        except Exception:  # the events still go in, naming the patients known without it
            log.exception("audit: could not look up the patients of %d returned resources", len(keys))
    return [d.entry(patients) if isinstance(d, Draft) else d for d in items]
