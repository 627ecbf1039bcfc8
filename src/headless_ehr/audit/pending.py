"""Write-side audit: the AuditEvent of each resource a request writes goes into
`audit_pending` in the write's own statement (store/), so a committed change always
has its event and a rolled-back one never does. A plain read of a Patient by id queues
a narrow row with its own statement (`read_event`, migration 0026). The recorder of any
node moves pending events into the hash chain in commit order (audit/recorder.py).

The FHIR endpoint opens an AuditScope for each request (who asks, from where); the
store asks `written()` for the event of each resource it writes. Outside a request
(the CLI, `ehr import`, EHR_AUDIT=off) there is no scope and nothing is recorded here.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg

from ..auth.principal import Principal
from ..search.rows import IndexRows
from .chain import Entry
from .event import Interaction, ReadTemplate, audit_event, read_template

_CODES = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


MAX_RETURNED = 2000  # resources of one request whose patients its event names, at most


@dataclass
class AuditScope:
    principal: Principal | None
    address: str
    sync: bool = True  # events queued by reads wait for the disk flush (EHR_AUDIT_SYNC_COMMIT)
    code: str = ""  # the request's restful interaction (read, search-type, create, …)
    resource: str | None = None  # the Type/id its URL addresses
    unaudited: bool = False  # GET /metadata: public, not audited
    writes: int = 0  # events written with changes in this request (committed or not)
    read_recorded: bool = False  # the request's read event went in with the read's own statement
    # what the store returned (Type, id), in order, unique: the event names their patients
    returned: dict[tuple[str, str], None] = field(default_factory=dict)


_node_writes = 0  # events this node put in audit_pending since its recorder last chained them


def writes_since_sweep() -> int:
    return _node_writes


def queued(count: int) -> None:
    global _node_writes
    _node_writes += count


def swept() -> None:
    global _node_writes
    _node_writes = 0


_scope: contextvars.ContextVar[AuditScope | None] = contextvars.ContextVar("audit_scope", default=None)


def begin(
    principal: Principal | None, address: str, sync: bool, code: str, resource: str | None, unaudited: bool
) -> contextvars.Token[AuditScope | None]:
    """Open the request's scope (the caller resets the token when the request ends)."""
    return _scope.set(AuditScope(principal, address, sync, code, resource, unaudited))


def current() -> AuditScope | None:
    return _scope.get()


def end(token: contextvars.Token[AuditScope | None]) -> AuditScope:
    scope = _scope.get()
    _scope.reset(token)
    assert scope is not None  # the one begin() set
    return scope


def returned(resources: Iterable[object]) -> None:
    """The store reports what a read, search or history gave back (StoredResource-like:
    resource_type, id), so the request's event names every patient it touched."""
    scope = _scope.get()
    if scope is None:
        return
    seen = scope.returned
    for r in resources:
        if len(seen) >= MAX_RETURNED:
            return
        seen[(r.resource_type, r.id)] = None  # type: ignore[attr-defined]


def read_event(resource_type: str) -> tuple[ReadTemplate, bool] | None:
    """The caller's template for a read of a Patient by id that queues its own event (store/sql.py
    READ_CURRENT_AUDITED), and whether to wait for the disk flush; None when the event must
    wait for what the request finds or names (other types, patients' own reads)."""
    scope = _scope.get()
    if scope is None or scope.code != "read" or resource_type != "Patient" or scope.principal is None:
        return None  # only a request that is this read (not an operation reading its focus)
    template = read_template(scope.principal, scope.address)
    return None if template is None else (template, scope.sync)


# A caller's template row, found or made (two nodes may make it at once: the loser's
# statement cannot see the winner's row until it runs again).
_REGISTER = (
    "WITH made AS (INSERT INTO audit_read_template (digest, head, tail, agents, address)"
    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (digest) DO NOTHING RETURNING id)"
    " SELECT id FROM made UNION ALL SELECT id FROM audit_read_template WHERE digest = $1"
)


async def register(db: asyncpg.Pool | asyncpg.Connection, template: ReadTemplate) -> int:
    """The database's id of a caller's read template, written the first time (once per caller
    and node: the id is kept on the template)."""
    for _ in range(3):
        found = await db.fetchval(
            _REGISTER, template.digest, template.head, template.tail, template.agents, template.address
        )
        if found is not None:
            template.id = found
            return found
    raise RuntimeError("audit: could not register a read template")


def read_recorded(recorded: bool, template: ReadTemplate) -> None:
    """What the read's statement did: queued its event, or found no template row for it (the
    row is made again next time; this request's event goes the way of other reads')."""
    scope = _scope.get()
    if not recorded:
        template.id = None
    elif scope is not None:
        scope.read_recorded = True
        queued(1)


def written(resource_type: str, rid: str, version: int, method: str, rows: IndexRows | None) -> Entry | None:
    """The event of one write in the current request, or None outside a request."""
    scope = _scope.get()
    if scope is None:
        return None
    code = _CODES.get(method, "update")
    patients = _patients(resource_type, rid, rows)
    reference = f"{resource_type}/{rid}/_history/{version}"
    interaction = Interaction(code, 201 if code == "create" else 200, reference, patients)
    scope.writes += 1
    queued(1)
    return audit_event(interaction, scope.principal, scope.address)


def _patients(resource_type: str, rid: str, rows: IndexRows | None) -> list[str]:
    """The patients the resource is or references: the rule audit/touched.py applies to what
    a request returned (a reference naming no id of ours, urn:uuid or another server's, counts not)."""
    own = [f"Patient/{rid}"] if resource_type == "Patient" else []
    if rows is None:
        return own
    return list(dict.fromkeys([*own, *(f"Patient/{r[2]}" for r in rows.reference if r[1] == "Patient" and r[2])]))


# One pending row, as parameters of the write statement's own CTE (store/sql.py).
PENDING_COLUMNS = "id, recorded, content, patients, agents, entities, subtype, outcome, action, address"
PENDING_TYPES = ("uuid", "timestamptz", "bytea", "text[]", "text[]", "text[]", "text", "text", "text", "text")


def pending_args(entry: Entry) -> list[object]:
    i = entry.index
    return [entry.id, entry.recorded, entry.content, *i.row()]
