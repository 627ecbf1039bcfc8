"""Create, read, vread, update, delete, history and search over PostgreSQL.

Writes are optimistic: the new version is computed from the current one and the
single-statement UPDATE only applies while the row still has that version, so two
concurrent writers can never both win (no lost update) and no lock is held across
round trips.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg
import orjson

from ..audit import pending as audit_pending
from ..audit.chain import queue as audit_queue
from ..auth.policies import guard_change, guard_search, unhidden
from ..auth.principal import SYSTEM, Principal
from ..fhir import json as fhir_json
from ..fhir.outcome import FhirError, Issue, has_errors
from ..fhir.references import RESOURCE_ID
from ..search.access import (
    any_type_access_sql,
    broad_access,
    scopes_sql,
    touched_access,
    type_access_sql,
    types_access_sql,
)
from ..search.compartment import Compartment, compartment_sql
from ..search.consent import denied_sql
from ..search.criteria import Criteria
from ..search.custom import check_search_parameter
from ..search.extract import extract
from ..search.paging import decode_cursor, encode_cursor
from ..search.query import (
    MAX_INCLUDE_ITERATIONS,
    Restrict,
    SearchLimits,
    SearchRequest,
    count_query,
    cursor_for,
    include_sql,
    page_query,
    parse_request,
)
from ..search.registry import search_params
from ..search.rows import IndexRows
from ..search.sql import ANY_TYPE, SqlBuilder
from . import etag, sql
from .bulk import INSERT_MANY, INSERT_MANY_WITHOUT_EVENTS, insert_many_args
from .etag import Versions
from .hooks import Hooks
from .ids import new_id
from .model import HistoryPage, SearchPage, StoredResource, WriteOutcome

Resource = dict[str, Any]
Validate = Callable[[Any], list[Issue]]
Executor = asyncpg.Pool | asyncpg.Connection

_OPTIMISTIC_ATTEMPTS = 2
MAX_CONDITIONAL_DELETES = 1000  # resources one conditional delete may remove
# Serialises conditional writes on their criteria (keys pre-sorted; unnest keeps the order).
_LOCK_CRITERIA = "SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k"
# Creates per INSERT statement: asyncpg encodes a statement's arguments in one go,
# holding the interpreter, so 10,000 resources in one statement would stall every
# other thread of the process for a second.
INSERT_CHUNK = 500


class PreparedCreate(NamedTuple):
    resource_type: str
    id: str
    content: bytes  # meta.lastUpdated is LAST_UPDATED_PLACEHOLDER until the database stamps it
    method: str
    rows: IndexRows
    stamp_at: int  # where the placeholder starts in content


@dataclass(frozen=True, slots=True)
class _Write:
    """What to write as the next version: a resource, or None for a deletion."""

    resource: Resource | None
    method: str


@functools.lru_cache(maxsize=8)  # a bundle or import batch stamps hundreds with one ts
def format_instant(ts: datetime) -> str:
    """An R4 instant with the microseconds PostgreSQL stores, so _since compares exactly."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


# meta.lastUpdated as serialised before the database has chosen the instant: the
# write statement overwrites these bytes with its own clock (sql.STAMP), so the stored
# JSON and the last_updated column agree exactly. Same length as every real value.
LAST_UPDATED_PLACEHOLDER = "0000-00-00T00:00:00.000000+00:00"
_PLACEHOLDER = LAST_UPDATED_PLACEHOLDER.encode()
assert len(_PLACEHOLDER) == sql.STAMP_LENGTH
_LAST_UPDATED_KEY = b'","lastUpdated":"'


def with_meta(resource: Resource, rid: str, version: int) -> Resource:
    """The resource with id and server-owned meta set; resourceType, id, meta lead and
    meta starts with versionId and lastUpdated (a placeholder until written), so the
    stored bytes have both at a known place: stamping and no-op checks need no parse."""
    meta: Resource = {"versionId": str(version), "lastUpdated": LAST_UPDATED_PLACEHOLDER}
    for key, value in (resource.get("meta") or {}).items():
        if key not in meta:
            meta[key] = value
    out: Resource = {"resourceType": resource["resourceType"], "id": rid, "meta": meta}
    for key, value in resource.items():
        if key not in out:
            out[key] = value
    return out


def serialise(final: Resource) -> tuple[bytes, int]:
    """The bytes to store for with_meta()'s result, and where the placeholder starts
    (its first occurrence: only resourceType and id come before it)."""
    content = fhir_json.dumps(final)
    return content, content.index(_PLACEHOLDER)


def stamped(content: bytes, stamp_at: int, ts_text: str) -> bytes:
    """content with the placeholder replaced, as the write statement stored it."""
    return content[:stamp_at] + ts_text.encode() + content[stamp_at + sql.STAMP_LENGTH :]


def same_content(stored: bytes, version: int, content: bytes, stamp_at: int) -> bool:
    """Whether stored (version `version`) holds what content would store, apart from
    meta.versionId and meta.lastUpdated: a byte comparison, no parsing."""
    tail = content[stamp_at + sql.STAMP_LENGTH :]
    head = content[: stamp_at - len(_LAST_UPDATED_KEY)]  # ... "versionId":"<new version>
    head = head[: head.rindex(b'"') + 1] + str(version).encode() + _LAST_UPDATED_KEY
    return len(stored) == len(head) + sql.STAMP_LENGTH + len(tail) and stored.startswith(head) and stored.endswith(tail)


def index_args(rows: IndexRows) -> tuple[sql.Mask, list[object]]:
    """Which index tables get rows, and the write statement's index parameters for
    them: one array per column of each such table, then the two full-text inputs."""
    mask: list[bool] = []
    args: list[object] = []
    for field, _table, columns in sql.INDEX_TABLES:
        table_rows = getattr(rows, field)
        mask.append(bool(table_rows))
        if table_rows:
            for i in range(len(columns)):
                args.append([row[i] for row in table_rows])
    args.append(rows.narrative)
    args.append(rows.content)
    return tuple(mask), args


class ResourceStore:
    """The resource repository over a pool, or over one connection inside a transaction."""

    def __init__(
        self,
        db: Executor,
        validate: Validate | None = None,
        max_page_size: int = 1000,
        search_db: Executor | None = None,
        limits: SearchLimits | None = None,
        local_base: str | None = None,
        hooks: Hooks | None = None,
        events: bool = True,
    ):
        self._db = db
        # resource type -> what its writes also do (store/hooks.py): Subscriptions' state
        self._hooks: Hooks = hooks or {}
        # False: writes leave no outbox row, so no event (`ehr import --no-events`, an initial load)
        self.events = events
        # this server's FHIR base: absolute references under it are local (search/extract)
        self.local_base = local_base
        # Searches vary so much by value (a rare code vs a common one) that a prepared
        # statement's generic plan is often 10x slower than a plan for the values at
        # hand; they run on connections that always plan for the actual values.
        self._search_db = search_db or db
        self._validate = validate
        self.max_page_size = max_page_size
        self.limits = limits or SearchLimits()
        self._on_bases: dict[str | None, ResourceStore] = {}

    def bound(self, conn: asyncpg.Connection) -> ResourceStore:
        """The same store running its statements on conn (e.g. inside a transaction)."""
        return ResourceStore(
            conn,
            self._validate,
            self.max_page_size,
            limits=self.limits,
            local_base=self.local_base,
            hooks=self._hooks,
            events=self.events,
        )

    def on_base(self, base: str | None) -> ResourceStore:
        """The same store for requests that came in on FHIR base `base` (one per base,
        made once: this runs on every request)."""
        if base == self.local_base:
            return self
        found = self._on_bases.get(base)
        if found is None:
            if len(self._on_bases) >= 64:  # Host values seen; keep the cache bounded
                self._on_bases.clear()
            found = copy.copy(self)
            found.local_base = base
            found._on_bases = {}
            self._on_bases[base] = found
        return found

    # -- validation -----------------------------------------------------------------

    def check(self, resource: Any, resource_type: str | None = None) -> list[Issue]:
        """Validate a parsed resource (of resource_type, when given); 422 when invalid."""
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise FhirError.of(400, "structure", "the body is not a FHIR resource (no resourceType)")
        if resource_type is not None and resource["resourceType"] != resource_type:
            raise FhirError.of(
                400,
                "invalid",
                f"resourceType '{resource['resourceType']}' does not match {resource_type}",
                "resourceType",
            )
        issues = self._validate(resource) if self._validate else []
        if has_errors(issues):
            raise FhirError(422, issues)
        if resource["resourceType"] == "SearchParameter":
            check_search_parameter(resource)  # 400 before a bad definition is stored
        return issues

    # -- reads --------------------------------------------------------------------------

    async def read(self, principal: Principal, resource_type: str, rid: str) -> StoredResource:
        """The current version; 404 when unknown, 410 when deleted."""
        principal.require("read", resource_type)
        if not RESOURCE_ID.fullmatch(rid):  # names nothing; PostgreSQL would refuse a NUL in it
            raise FhirError.of(404, "not-found", f"{resource_type}/{rid[:100]} is not known")
        event = None
        if principal.access("read", resource_type) is None:  # nothing restricts: queue the event with the read
            event = audit_pending.read_event(resource_type)
        if event is None:
            row = await self._db.fetchrow(sql.READ_CURRENT, resource_type, rid)
        else:
            template, sync = event
            template_id = template.id or await audit_pending.register(self._db, template)
            row = await self._db.fetchrow(sql.READ_CURRENT_AUDITED, resource_type, rid, template_id, sync)
            if row is not None and row[2] is not None:
                audit_pending.read_recorded(row[3], template)
        if row is None:
            raise FhirError.of(404, "not-found", f"{resource_type}/{rid} is not known")
        if event is None and not await self._reachable(principal, "read", resource_type, rid):
            raise FhirError.of(404, "not-found", f"{resource_type}/{rid} is not known")
        stored = StoredResource(resource_type, rid, row[0], row[1], row[2])
        audit_pending.returned((stored,))
        if stored.deleted:
            raise FhirError(
                410,
                [Issue("error", "deleted", f"{resource_type}/{rid} has been deleted")],
                {"ETag": f'W/"{stored.version_id}"'},
            )
        return stored

    async def vread(self, principal: Principal, resource_type: str, rid: str, version: str) -> StoredResource:
        principal.require("vread", resource_type)
        if not (version.isascii() and version.isdigit()) or len(version) > 9 or not RESOURCE_ID.fullmatch(rid):
            raise FhirError.of(404, "not-found", f"{resource_type}/{rid} has no version {version}")
        row = await self._db.fetchrow(sql.READ_VERSION, resource_type, rid, int(version))
        if row is None:
            raise FhirError.of(404, "not-found", f"{resource_type}/{rid} has no version {version}")
        if not await self._reachable(principal, "vread", resource_type, rid):
            raise FhirError.of(404, "not-found", f"{resource_type}/{rid} has no version {version}")
        stored = StoredResource(resource_type, rid, row[0], row[1], row[2], row[3])
        audit_pending.returned((stored,))
        if stored.deleted:
            raise FhirError.of(410, "deleted", f"version {version} of {resource_type}/{rid} is a deletion")
        return stored

    async def vread_many(
        self, principal: Principal, versions: list[tuple[str, str, int]]
    ) -> dict[tuple[str, str, int], StoredResource]:
        """The versions (type, id, version_id) the principal may vread, keyed as asked; one
        that is unknown, a deletion or out of its reach is left out. One statement when
        nothing restricts the principal on these types, else a vread each."""
        found: dict[tuple[str, str, int], StoredResource] = {}
        types = {t for t, _, _ in versions}
        if all(principal.allows("vread", t) and principal.access("vread", t) is None for t in types):
            columns = [list(c) for c in zip(*versions, strict=True)] if versions else [[], [], []]
            for row in await self._db.fetch(sql.READ_VERSIONS, *columns):
                if row[4] is not None:
                    found[(row[0], row[1], row[2])] = StoredResource(*row)
            audit_pending.returned(found.values())
            return found
        for key in versions:
            try:
                found[key] = await self.vread(principal, key[0], key[1], str(key[2]))
            except FhirError:
                continue  # 403, 404, 410: not for this principal
        return found

    # -- access -------------------------------------------------------------------------
    # One rule for reads and writes (search/access.py): a restricted principal reaches a
    # row when the row satisfies its access predicate. Reads answer 404 for a row it
    # cannot reach (403 would tell that the row exists, in someone else's compartment);
    # writes check the row they wrote, in their own transaction, and roll back with 403.

    def _row_check(
        self, principal: Principal, interaction: str, resource_type: str, rid: str, *, live: bool, lock: bool = False
    ) -> tuple[str, list[object]] | None:
        """SELECT of "principal reaches the row" (live: and it is not deleted) for the
        row of resource_type/rid; None when the principal reaches every row of the type."""
        scopes = principal.access(interaction, resource_type)  # 403 when nothing allows
        if scopes is None:
            return None
        b = SqlBuilder()
        rtype, ident = b.arg(resource_type), b.arg(rid)
        # [0]: the row is there for the principal; [1]: and it may write it (not shared
        # with another patient's record: Scope.exclusive)
        seen = scopes_sql(b, tuple(replace(s, exclusive=False) for s in scopes), resource_type, "r", self.local_base)
        if live:
            seen = f"NOT r.deleted AND {seen}"
        writable = "true"
        if any(s.exclusive for s in scopes):
            writable = scopes_sql(b, scopes, resource_type, "r", self.local_base)
        columns = f"{seen}, {writable}"
        statement = f"SELECT {columns} FROM resource r WHERE r.resource_type = {rtype} AND r.id = {ident}"
        return statement + (" FOR UPDATE OF r" if lock else ""), b.args

    async def _reachable(self, principal: Principal, interaction: str, resource_type: str, rid: str) -> bool:
        """Whether the principal may see the row (deleted or not) with interaction."""
        check = self._row_check(principal, interaction, resource_type, rid, live=False)
        return check is None or bool(await self._db.fetchval(check[0], *check[1]))

    async def _check_written(self, principal: Principal, interaction: str, resource_type: str, rids: list[str]) -> None:
        """403 unless every row just written (in this store's transaction) lies inside
        what the principal may write: its compartment and its scopes' criteria. The
        caller's transaction rolls the write back."""
        scopes = principal.access(interaction, resource_type)
        if scopes is None or not rids:
            return
        b = SqlBuilder()
        rtype, ids = b.arg(resource_type), b.arg(rids)
        predicate = scopes_sql(b, scopes, resource_type, "r", self.local_base)
        outside = await self._db.fetchval(
            f"SELECT count(*) FROM resource r WHERE r.resource_type = {rtype} AND r.id = ANY({ids}::text[])"
            f" AND NOT coalesce({predicate}, false)",
            *b.args,
        )
        if outside:
            raise FhirError.of(
                403,
                "forbidden",
                f"not permitted to {interaction} this {resource_type}: it would lie outside the resources"
                " this token may write (patient compartment or scope criteria)",
            )

    @contextlib.asynccontextmanager
    async def _guarded(
        self, principal: Principal, interaction: str, resource_type: str, rid: str
    ) -> AsyncIterator[tuple[ResourceStore, bool]]:
        """This store in a transaction in which a restricted principal's change of
        resource_type/rid is checked: 404 when the row exists but is out of its reach
        (or deleted), and the row written must be inside it. Yields (store, checked)."""
        check = self._row_check(principal, interaction, resource_type, rid, live=True, lock=True)
        if check is None:
            yield self, False
            return
        async with self.transaction() as store:
            row = await store._db.fetchrow(check[0], *check[1])
            if row is not None and not row[0]:
                raise FhirError.of(404, "not-found", f"{resource_type}/{rid} is not known")
            if row is not None and not row[1]:
                raise FhirError.of(
                    403,
                    "forbidden",
                    f"not permitted to {interaction} {resource_type}/{rid}: it is in another patient's record too",
                )
            if row is None and interaction != "update":  # update may create; nothing else acts on nothing
                raise FhirError.of(404, "not-found", f"{resource_type}/{rid} is not known")
            yield store, True

    # -- writes -------------------------------------------------------------------------

    async def _write(
        self,
        resource: Resource | None,
        resource_type: str,
        rid: str,
        version: int,
        method: str,
        current: asyncpg.Record | None,
    ) -> StoredResource | None:
        """Insert (no current row) or replace the current version; None when it lost a
        race. Content identical to the current version's writes nothing and answers the
        current version (an update that changes nothing is not a new version)."""
        content: bytes | None = None
        stamp_at: int | None = None
        rows = IndexRows()
        if resource is not None:
            final = with_meta(resource, rid, version)
            content, stamp_at = serialise(final)
            live = current is not None and current[2] is not None  # an update of a non-deleted version
            if live and same_content(current[2], current[0], content, stamp_at):
                return StoredResource(resource_type, rid, current[0], current[1], current[2])
            rows = extract(final, local_base=self.local_base)
        mask, index = index_args(rows)
        position = None if stamp_at is None else stamp_at + 1
        args = [resource_type, rid, version, position, content, method, *index]
        event = audit_pending.written(resource_type, rid, version, method, rows)
        audit = [] if event is None else audit_pending.pending_args(event)
        if current is None:
            row = await self._db.fetchrow(sql.write_statement("insert", mask, bool(audit), self.events), *args, *audit)
        else:
            statement = sql.write_statement("update", mask, bool(audit), self.events)
            row = await self._db.fetchrow(statement, *args, current[0], *audit)
        if row is None:
            return None
        ts, ts_text = row
        if content is not None:
            assert stamp_at is not None
            content = stamped(content, stamp_at, ts_text)
        return StoredResource(resource_type, rid, version, ts, content, method)

    async def create(
        self,
        principal: Principal,
        resource: Any,
        *,
        if_none_exist: Criteria | None = None,
        method: str = "POST",
        resource_type: str | None = None,
    ) -> WriteOutcome:
        """Create with a server-assigned id; with if_none_exist, only when nothing matches."""
        _require_for(principal, "create", resource, resource_type)  # before validation: a refusal reveals nothing
        self.check(resource, resource_type)
        resource = self._hook_check(principal, resource)
        resource_type = resource["resourceType"]
        if if_none_exist is not None:
            async with self._serialised(if_none_exist) as store:
                found = await store.match(principal, if_none_exist)
                if found is not None:
                    return WriteOutcome(found, created=False, matched=True)
                return await store._create(principal, resource, resource_type, method)
        return await self._create(principal, resource, resource_type, method)

    async def _create(self, principal: Principal, resource: Resource, resource_type: str, method: str) -> WriteOutcome:
        if principal.access("create", resource_type) is None and resource_type not in self._hooks:
            stored = await self._write(resource, resource_type, new_id(), 1, method, None)
            assert stored is not None  # a fresh UUID cannot collide
            return WriteOutcome(stored, created=True)
        async with self.transaction() as store:  # the check (and the hook) rolls the write back
            stored = await store._write(resource, resource_type, new_id(), 1, method, None)
            assert stored is not None
            await store._check_written(principal, "create", resource_type, [stored.id])
            await store._hook_written(principal, stored)
        return WriteOutcome(stored, created=True)

    def prepare_create(self, principal: Principal, resource: Any, rid: str, method: str) -> PreparedCreate:
        """Validate and serialise a create with a chosen id, for insert_prepared()."""
        _require_for(principal, "create", resource, None)
        self.check(resource)
        resource = self._hook_check(principal, resource)
        resource_type = resource["resourceType"]
        final = with_meta(resource, rid, 1)
        content, stamp_at = serialise(final)
        return PreparedCreate(resource_type, rid, content, method, extract(final, local_base=self.local_base), stamp_at)

    async def insert_prepared(self, items: list[PreparedCreate], principal: Principal = SYSTEM) -> list[StoredResource]:
        """Insert prepared creates (a duplicate id fails them all), INSERT_CHUNK per
        statement; each gets the timestamp the database gives its statement. A restricted
        principal's rows are checked in the same transaction (403 undoes them all)."""
        if not items:
            return []
        checked = principal.grants is not None and any(
            principal.access("create", t) is not None for t in {i.resource_type for i in items}
        )
        events = [audit_pending.written(i.resource_type, i.id, 1, i.method, i.rows) for i in items]
        audited = [e for e in events if e is not None]
        hooked = [n for n, i in enumerate(items) if i.resource_type in self._hooks] if self._hooks else []
        statement = INSERT_MANY if self.events else INSERT_MANY_WITHOUT_EVENTS
        try:
            if len(items) <= INSERT_CHUNK and not checked and not audited and not hooked:
                ts, ts_text = await self._db.fetchrow(statement, *insert_many_args(items))
                stamps = [(ts, ts_text)] * len(items)
            else:
                stamps = []
                async with self._transaction() as conn:
                    for start in range(0, len(items), INSERT_CHUNK):
                        chunk = items[start : start + INSERT_CHUNK]
                        stamp = tuple(await conn.fetchrow(statement, *insert_many_args(chunk)))
                        stamps += [stamp] * len(chunk)
                    if audited:  # in the same transaction: the events commit with the resources
                        await audit_queue(conn, audited)
                    if checked:
                        bound = self.bound(conn)
                        by_type: dict[str, list[str]] = {}
                        for item in items:
                            by_type.setdefault(item.resource_type, []).append(item.id)
                        for rtype, ids in by_type.items():
                            await bound._check_written(principal, "create", rtype, ids)
                    for n in hooked:
                        item, (ts, ts_text) = items[n], stamps[n]
                        created = StoredResource(item[0], item[1], 1, ts, stamped(item[2], item[5], ts_text), item[3])
                        await self.bound(conn)._hook_written(principal, created)
        except asyncpg.UniqueViolationError:
            raise FhirError.of(409, "duplicate", "a resource with one of these ids already exists") from None
        return [
            StoredResource(i[0], i[1], 1, ts, stamped(i[2], i[5], ts_text), i[3])
            for i, (ts, ts_text) in zip(items, stamps, strict=True)
        ]

    async def update(
        self,
        principal: Principal,
        resource_type: str,
        rid: str,
        resource: Any,
        *,
        if_match: Versions | int | None = None,
        method: str = "PUT",
    ) -> WriteOutcome:
        """Replace (or create with the client's id); If-Match makes it version-aware."""
        principal.require("update", resource_type)  # before validation: a refusal reveals nothing
        self.check(resource, resource_type)
        if resource.get("id") is None:
            raise FhirError.of(400, "required", "an update must carry the resource id", "id")
        if resource["id"] != rid:
            raise FhirError.of(400, "invalid", f"id '{resource['id']}' does not match the URL id '{rid}'", "id")
        resource = self._hook_check(principal, resource)

        def plan(current: asyncpg.Record | None) -> _Write:
            if if_match is not None and (current is None or (if_match == etag.ANY and current[2] is None)):
                raise FhirError.of(412, "conflict", f"{resource_type}/{rid} does not exist (If-Match)")
            if current is not None and if_match is not None and not etag.matches(if_match, current[0]):
                raise _version_conflict(resource_type, rid, if_match, current[0])
            # access policies: readonly and hidden elements (auth/policies.py)
            return _Write(guard_change(principal, resource_type, current and current[2], resource), method)

        async with (
            self._hooked(resource_type) as hooked,
            hooked._guarded(principal, "update", resource_type, rid) as (
                store,
                checked,
            ),
        ):
            stored, before = await store._versioned(resource_type, rid, plan)
            assert stored is not None
            if checked:
                await store._check_written(principal, "update", resource_type, [rid])
            await store._hook_written(principal, stored)
        return WriteOutcome(stored, created=before is None or before[2] is None)

    async def patch(
        self,
        principal: Principal,
        resource_type: str,
        rid: str,
        apply: Callable[[Resource], Resource],
        *,
        if_match: Versions | int | None = None,
    ) -> WriteOutcome:
        """Apply a patch function to the current version; the result is validated like an update."""
        principal.require("patch", resource_type)

        def plan(current: asyncpg.Record | None) -> _Write:
            if current is None:
                raise FhirError.of(404, "not-found", f"{resource_type}/{rid} is not known")
            if if_match is not None and not etag.matches(if_match, current[0]):
                raise _version_conflict(resource_type, rid, if_match, current[0])
            if current[2] is None:
                raise FhirError.of(410, "deleted", f"{resource_type}/{rid} has been deleted")
            # applied to the resource as the caller sees it: a patch cannot read (test, copy,
            # move) a hidden element; guard_change puts the hidden elements back
            patched = apply(unhidden(principal, resource_type, fhir_json.loads(current[2])))
            self.check(patched, resource_type)
            if patched.get("id") != rid:
                raise FhirError.of(422, "processing", "a patch may not change the resource id", "id")
            patched = self._hook_check(principal, patched)
            return _Write(guard_change(principal, resource_type, current[2], patched), "PATCH")

        async with (
            self._hooked(resource_type) as hooked,
            hooked._guarded(principal, "patch", resource_type, rid) as (
                store,
                checked,
            ),
        ):
            stored, _ = await store._versioned(resource_type, rid, plan)
            assert stored is not None
            if checked:
                await store._check_written(principal, "patch", resource_type, [rid])
            await store._hook_written(principal, stored)
        return WriteOutcome(stored, created=False)

    async def delete(
        self, principal: Principal, resource_type: str, rid: str, *, if_match: Versions | int | None = None
    ) -> StoredResource | None:
        """Delete; returns the deletion version, or None when there was nothing to delete
        (already deleted, or never existed: R4 http.html#delete answers both with success)."""
        principal.require("delete", resource_type)

        def plan(current: asyncpg.Record | None) -> _Write | None:
            if current is None:
                if if_match is not None:
                    raise FhirError.of(412, "conflict", f"{resource_type}/{rid} does not exist (If-Match)")
                return None
            if if_match is not None and not etag.matches(if_match, current[0]):
                raise _version_conflict(resource_type, rid, if_match, current[0])
            return None if current[2] is None else _Write(None, "DELETE")

        async with (
            self._hooked(resource_type) as hooked,
            hooked._guarded(principal, "delete", resource_type, rid) as (
                store,
                _checked,
            ),
        ):
            stored, _ = await store._versioned(resource_type, rid, plan)
            if stored is not None:
                await store._hook_written(principal, stored)
        return stored

    async def _versioned(
        self,
        resource_type: str,
        rid: str,
        plan: Callable[[asyncpg.Record | None], _Write | None],
    ) -> tuple[StoredResource | None, asyncpg.Record | None]:
        """Write the next version of a resource as `plan` decides from the current row.

        Optimistic first (read, then a write that only applies to the version read);
        after repeated lost races, pessimistic: lock the row so progress is certain.
        Returns what was written (None when plan chose not to write) and the row before.
        """
        async with self._connection() as conn:  # read and write on one connection
            for _ in range(_OPTIMISTIC_ATTEMPTS):
                current = await conn.fetchrow(sql.READ_CURRENT, resource_type, rid)
                step = plan(current)
                if step is None:
                    return None, current
                stored = await self.bound(conn)._write_next(step, resource_type, rid, current)
                if stored is not None:
                    return stored, current
        async with self._transaction() as conn:
            locked = self.bound(conn)
            while True:
                current = await conn.fetchrow(sql.READ_CURRENT_FOR_UPDATE, resource_type, rid)
                step = plan(current)
                if step is None:
                    return None, current
                stored = await locked._write_next(step, resource_type, rid, current)
                if stored is not None:  # None only if a concurrent insert won; it is visible now
                    return stored, current

    async def _write_next(
        self, step: _Write, resource_type: str, rid: str, current: asyncpg.Record | None
    ) -> StoredResource | None:
        version = 1 if current is None else current[0] + 1
        return await self._write(step.resource, resource_type, rid, version, step.method, current)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection: one from the pool, or the one this store is bound to."""
        if isinstance(self._db, asyncpg.Pool):
            async with self._db.acquire() as conn:
                yield conn
        else:
            yield self._db

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction (or a savepoint, when this store is bound to one)."""
        if isinstance(self._db, asyncpg.Pool):
            async with self._db.acquire() as conn, conn.transaction():
                yield conn
        else:
            async with self._db.transaction():
                yield self._db

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[ResourceStore]:
        """This store bound to a transaction of its own (a savepoint inside one). Callers
        go through here rather than a pool: a store bound to a worker thread's connection
        (rest/offload.py) must never touch the app's pool, which belongs to another loop."""
        async with self._transaction() as conn:
            yield self.bound(conn)

    # -- write hooks (store/hooks.py) ---------------------------------------------------

    def _hook_check(self, principal: Principal, resource: Resource) -> Resource:
        """The resource as its type's hook lets it be written (itself when no hook)."""
        hook = self._hooks.get(resource["resourceType"]) if self._hooks else None
        return resource if hook is None else hook.check(principal, resource)

    @contextlib.asynccontextmanager
    async def _hooked(self, resource_type: str) -> AsyncIterator[ResourceStore]:
        """This store, in a transaction of its own when resource_type has a hook (its
        effects commit or roll back with the write)."""
        if resource_type not in self._hooks:
            yield self
            return
        async with self.transaction() as store:
            yield store

    async def _hook_written(self, principal: Principal, stored: StoredResource) -> None:
        """Run the type's hook after a write (in this store's transaction); also after an
        update that changed nothing (stored.method None: no new version was written)."""
        hook = self._hooks.get(stored.resource_type) if self._hooks else None
        if hook is None:
            return
        assert isinstance(self._db, asyncpg.Connection) and self._db.is_in_transaction()
        await hook.written(self, self._db, principal, stored)

    # -- conditional interactions -----------------------------------------------------

    @contextlib.asynccontextmanager
    async def _serialised(self, criteria: Criteria) -> AsyncIterator[ResourceStore]:
        """This store inside a transaction that holds the lock of criteria.

        Two conditional writes with the same criteria would otherwise both see no match
        and both create. The lock is a transaction-scoped advisory lock, so it works
        across nodes and is released at commit, after the write is visible; the match
        and the write run on the locked connection, so the match sees the last holder's
        committed write. Inside a bundle (a bound store) this is a savepoint.
        """
        async with self.transaction() as store:
            await store.lock([criteria])
            yield store

    async def lock(self, criteria: list[Criteria]) -> None:
        """Take the advisory locks of criteria in this store's transaction, in key order
        so that two transactions locking several never deadlock on each other."""
        keys = sorted({c.lock_key_on(self.local_base) for c in criteria})
        if keys:
            assert isinstance(self._db, asyncpg.Connection) and self._db.is_in_transaction()
            await self._db.fetchval(_LOCK_CRITERIA, keys)

    async def matches(self, principal: Principal, criteria: Criteria, limit: int | None = None) -> list[StoredResource]:
        """The resources matching criteria: up to limit, or all of them (paged)."""
        count = self.max_page_size if limit is None else min(limit, self.max_page_size)
        params = [*criteria.params, ("_count", str(count))]
        found: list[StoredResource] = []
        cursor = None
        while True:
            page = await self.search(principal, criteria.resource_type, params, strict=True, cursor=cursor)
            found += page.entries
            cursor = page.next_cursor
            if cursor is None or (limit is not None and len(found) >= limit):
                return found if limit is None else found[:limit]

    async def matches_to_delete(self, principal: Principal, criteria: Criteria) -> list[StoredResource]:
        """Every match of a conditional delete of several (EHR_CONDITIONAL_DELETE=multiple),
        bounded: one request deletes at most MAX_CONDITIONAL_DELETES resources (412 beyond)."""
        found = await self.matches(principal, criteria, MAX_CONDITIONAL_DELETES + 1)
        if len(found) > MAX_CONDITIONAL_DELETES:
            raise FhirError.of(
                412,
                "too-costly",
                f"conditional delete: the criteria match more than {MAX_CONDITIONAL_DELETES} resources;"
                " narrow them and delete in parts",
            )
        return found

    async def match(self, principal: Principal, criteria: Criteria) -> StoredResource | None:
        """The single resource matching criteria, None for none, 412 for several."""
        found = await self.matches(principal, criteria, 2)
        if len(found) > 1:
            raise FhirError.of(
                412, "multiple-matches", f"conditional {criteria.what}: the criteria match several resources"
            )
        return found[0] if found else None

    async def conditional_update(
        self,
        principal: Principal,
        criteria: Criteria,
        resource: Any,
        *,
        if_match: Versions | int | None = None,
    ) -> WriteOutcome:
        """Update the one match, or create when none matches (id from the body or new)."""
        resource_type = criteria.resource_type
        principal.require("update", resource_type)
        self.check(resource, resource_type)
        async with self._serialised(criteria) as store:
            found = await store.match(principal, criteria)
            rid = conditional_update_id(resource, found)
            if rid is None:
                return await store.create(principal, resource, method="PUT")
            return await store.update(
                principal, resource_type, rid, {**resource, "id": rid}, if_match=if_match if found else None
            )

    async def conditional_patch(
        self,
        principal: Principal,
        criteria: Criteria,
        apply: Callable[[Resource], Resource],
        *,
        if_match: Versions | int | None = None,
    ) -> WriteOutcome:
        """Patch the one match; 404 when nothing matches."""
        principal.require("patch", criteria.resource_type)
        async with self._serialised(criteria) as store:
            found = await store.match(principal, criteria)
            if found is None:
                raise FhirError.of(404, "not-found", f"no {criteria.resource_type} matches the criteria")
            return await store.patch(principal, criteria.resource_type, found.id, apply, if_match=if_match)

    async def conditional_delete(
        self, principal: Principal, criteria: Criteria, *, multiple: bool = False
    ) -> list[StoredResource]:
        """Delete the one match (412 for several), or with multiple every match;
        returns the deletion versions written (none when nothing matched)."""
        principal.require("delete", criteria.resource_type)
        async with self._serialised(criteria) as store:
            if multiple:
                targets = await store.matches_to_delete(principal, criteria)
            else:
                found = await store.match(principal, criteria)
                targets = [found] if found is not None else []
            deleted = []
            for target in targets:
                stored = await store.delete(principal, criteria.resource_type, target.id)
                if stored is not None:
                    deleted.append(stored)
            return deleted

    # -- history ------------------------------------------------------------------------

    async def history(
        self,
        principal: Principal,
        resource_type: str | None = None,
        rid: str | None = None,
        *,
        since: datetime | None = None,
        count: int = 20,
        cursor: str | None = None,
    ) -> HistoryPage:
        """Versions newest first, keyset-paged on (last_updated, seq), below the watermark.

        Only versions below write_watermark() (migration 0009) are shown: one that
        commits later is never older than it, so polling with `_since` set to the
        page's `settled` instant (Bundle.meta.lastUpdated) never misses a version that
        commits after a later-started one. Every page of one traversal keeps the first
        page's watermark (it travels in the cursor).
        """
        count = max(0, min(count, self.max_page_size))
        where: list[str] = []
        args: list[object] = []
        b = SqlBuilder(args)
        arg = b.arg
        reachable = self._history_access(b, principal, resource_type, rid)

        position: tuple[datetime, int] | None = None
        settled: datetime | None = None
        if cursor:
            state = decode_cursor(cursor)
            try:
                position = datetime.fromisoformat(state[0]), state[1]
                if len(state) > 2:
                    settled = datetime.fromisoformat(state[2])
            except (TypeError, ValueError, IndexError, KeyError):
                raise FhirError.of(400, "invalid", "malformed paging cursor") from None
            seq = position[1]  # a bigint; an aware instant (PostgreSQL would fail on anything else)
            if position[0].tzinfo is None or type(seq) is not int or not 0 <= seq < 2**63:
                raise FhirError.of(400, "invalid", "the paging cursor does not fit this history")
            if settled is not None and settled.tzinfo is None:
                raise FhirError.of(400, "invalid", "the paging cursor does not fit this history")
        if settled is None:
            settled = await self._db.fetchval("SELECT write_watermark()")
        where.append(f"last_updated < {arg(settled)}")
        if resource_type:
            where.append(f"resource_type = {arg(resource_type)}")
        if rid:
            where.append(f"id = {arg(rid)}")
        if since is not None:
            where.append(f"last_updated >= {arg(since)}")
        if reachable is not None:
            where.append(reachable)
        total = None
        if rid and resource_type:  # cheap at instance level; omitted for type/system
            total = await self._db.fetchval(f"SELECT count(*) FROM resource_history WHERE {' AND '.join(where)}", *args)
        if position is not None:
            where.append(f"(last_updated, seq) < ({arg(position[0])}, {arg(position[1])})")
        rows = await self._db.fetch(
            f"SELECT {sql.HISTORY_COLUMNS} FROM resource_history WHERE {' AND '.join(where)}"
            f" ORDER BY last_updated DESC, seq DESC LIMIT {count + 1}",
            *args,
        )
        entries = [StoredResource(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows[:count]]
        next_cursor = None
        if len(rows) > count and count:
            last = rows[count - 1]
            next_cursor = encode_cursor([last[3].isoformat(), last[6], settled.isoformat()])
        audit_pending.returned(entries)
        return HistoryPage(entries, next_cursor, total, settled)

    def _history_access(
        self, b: SqlBuilder, principal: Principal, resource_type: str | None, rid: str | None
    ) -> str | None:
        """Which versions a principal sees in a history: those of resources it reaches
        now (the current-state rule, docs/security.md): the index that decides
        compartment and criteria describes current versions only, and a resource whose
        current version is a deletion has no index rows, so it is reached by no one
        restricted. 403 when the principal may not read the type's history at all."""
        if resource_type and rid:
            predicate = type_access_sql(b, principal, "history", resource_type, "r", self.local_base)
        elif resource_type:
            predicate = type_access_sql(b, principal, "search", resource_type, "r", self.local_base)
        else:
            predicate = type_access_sql(b, principal, "search", ANY_TYPE, "r", self.local_base)
        if predicate is None:
            return None
        return (
            "(resource_type, id) IN (SELECT r.resource_type, r.id FROM resource r WHERE"
            + (f" r.resource_type = {b.arg(resource_type)} AND" if resource_type else "")
            + (f" r.id = {b.arg(rid)} AND" if rid else "")
            + f" {predicate})"
        )

    async def consent_denies(self, principal: Principal, returned: list[tuple[str, str]]) -> bool:
        """Whether a patient's Consent denies the principal (ignoring its break-the-glass)
        any of the returned (type, id): then BTG overrode it, and the audit says so."""
        viewer = principal.consent_viewer()
        if viewer is None or not returned:
            return False
        b = SqlBuilder()
        types, ids = b.arg([t for t, _ in returned]), b.arg([i for _, i in returned])
        return bool(
            await self._search_db.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM resource r WHERE (r.resource_type, r.id) IN"
                f" (SELECT * FROM unnest({types}::text[], {ids}::text[]))"
                f" AND {denied_sql(b, viewer, ANY_TYPE, 'r')})",
                *b.args,
            )
        )

    # -- search -------------------------------------------------------------------------

    async def search(
        self,
        principal: Principal,
        resource_types: str | list[str],
        params: list[tuple[str, str]],
        *,
        strict: bool = False,
        cursor: str | None = None,
        default_count: int = 20,
        compartment: Compartment | None = None,
    ) -> SearchPage:
        """Current, non-deleted resources matching params, keyset-paged, with includes."""
        types = [resource_types] if isinstance(resource_types, str) else list(resource_types)
        for rtype in types:
            principal.require("search", rtype)
        request = parse_request(
            types,
            params,
            strict=strict,
            default_count=default_count,
            max_count=self.max_page_size,
            limits=self.limits,
            local_base=self.local_base,
        )
        guard_search(principal, request.clauses, request.sort)  # access policies: no matching on hidden elements
        if request.contained != "false":
            _check_contained_access(principal, compartment)
        b = self._search_builder(principal)
        restriction = self._restriction(principal, types, compartment)
        total: int | None = None
        if request.summary == "count" or request.count == 0:  # R4: _count=0 is a count
            total = await self._search_db.fetchval(count_query(request, restriction, b), *b.args)
            return SearchPage([], total, None, None, request.issues, request=request)
        query = page_query(request, cursor, restriction, b)
        rows = await self._search_db.fetch(query.sql, *query.args)
        if query.fill is not None and len(rows) <= request.count:
            fill_sql, fill_args = query.fill
            rows += await self._search_db.fetch(
                fill_sql.replace("{limit}", str(request.count + 1 - len(rows))), *fill_args
            )
        more = len(rows) > request.count
        rows = rows[: request.count]
        if query.backwards:
            rows.reverse()
        if request.contained_type == "contained":
            entries = _contained_entries(rows)
        else:
            entries = [StoredResource(r[0], r[1], r[2], r[3], r[4]) for r in rows]
        next_cursor = prev_cursor = None
        if rows and (more or query.backwards):
            next_cursor = cursor_for(rows[-1], request, query.sort_count, False)
        if rows and cursor and (more or not query.backwards):
            prev_cursor = cursor_for(rows[0], request, query.sort_count, True)
        if request.total == "accurate" or (request.total is None and not cursor and not more):
            if not cursor and not more:
                total = len(entries)
            else:
                cb = self._search_builder(principal)
                total = await self._search_db.fetchval(count_query(request, restriction, cb), *cb.args)
        elif request.total == "estimate":
            total = await self._estimate(principal, request, restriction)
        included, truncated = await self._includes(principal, request, entries)
        issues = request.issues
        if truncated:
            cap = self.limits.max_includes
            message = f"only {cap} included resources are returned per page; some are left out (use a smaller _count)"
            issues = [*issues, Issue("warning", "too-costly", message)]
        audit_pending.returned(entries)
        audit_pending.returned(included)
        return SearchPage(entries, total, next_cursor, prev_cursor, issues, included, request)

    def _search_builder(self, principal: Principal) -> SqlBuilder:
        """A builder whose chains, `_has` and `_list` are restricted to what principal may search."""
        b = SqlBuilder()
        b.access = touched_access(principal, self.local_base)
        return b

    def _restriction(self, principal: Principal, types: list[str], compartment: Compartment | None) -> Restrict | None:
        """The rows of the searched types a search may match: in the compartment searched
        (if any) and within the principal's access (403 for a type it may not search)."""
        in_compartment = _compartment_restriction(types, compartment)
        if principal.grants is None:
            return in_compartment
        if types_access_sql(SqlBuilder(), principal, "search", types, "r", self.local_base) is None:  # 403 early
            return in_compartment  # the principal reaches every row of these types
        local_base = self.local_base

        def access(b: SqlBuilder, alias: str) -> str:
            return types_access_sql(b, principal, "search", types, alias, local_base) or "true"

        if in_compartment is None:
            broad = broad_access(principal, "search", types)
            return Restrict(access, id_only=not _reads_row(principal, types), broad=broad)

        def both(b: SqlBuilder, alias: str) -> str:
            return f"{in_compartment(b, alias)} AND {access(b, alias)}"

        return Restrict(both, id_only=in_compartment.id_only and not _reads_row(principal, types))

    async def _estimate(self, principal: Principal, request: SearchRequest, restriction: Restrict | None) -> int:
        b = self._search_builder(principal)
        plan = await self._search_db.fetchval(
            "EXPLAIN (FORMAT JSON) " + count_query(request, restriction, b).replace("count(*)", "1", 1),
            *b.args,
        )
        data = plan if isinstance(plan, list) else orjson.loads(plan)
        return int(data[0]["Plan"]["Plan Rows"])

    async def _includes(
        self, principal: Principal, request: SearchRequest, matches: list[StoredResource]
    ) -> tuple[list[StoredResource], bool]:
        """_include and _revinclude targets of the matches (iterating where asked), at
        most limits.max_includes of them, and whether some were left out for that cap."""
        if not request.includes or not matches:
            return [], False
        cap = self.limits.max_includes
        seen = {(m.resource_type, m.id) for m in matches}
        found: list[StoredResource] = []
        frontier = list(matches)
        for round_ in range(MAX_INCLUDE_ITERATIONS):
            wanted = [inc for inc in request.includes if round_ == 0 or inc.iterate]
            if not wanted or not frontier:
                break
            fresh: list[StoredResource] = []
            for inc in wanted:
                room = cap - len(found) - len(fresh)
                b = self._search_builder(principal)
                visible = self._include_access(b, principal, inc)
                if visible == "false":
                    continue  # a type the principal may not read: nothing of it is included
                # rows already seen come back too: ask for enough to fill the room and one
                # more, which tells that the cap left something out
                statement = include_sql(b, inc, frontier, room + len(seen) + 1, visible)
                if statement is None:
                    continue
                for r in await self._search_db.fetch(statement, *b.args):
                    key = (r[0], r[1])
                    if key in seen:
                        continue
                    if len(found) + len(fresh) >= cap:
                        found += fresh
                        return found, True
                    seen.add(key)
                    fresh.append(StoredResource(r[0], r[1], r[2], r[3], r[4]))
            found += fresh
            frontier = fresh
        return found, False

    def _include_access(self, b: SqlBuilder, principal: Principal, inc: Any) -> str | None:
        """The principal's read access on what an include brings in (alias r): of the
        included type when it is known, else of each type the reference may name."""
        if principal.grants is None:
            return None
        if inc.reverse:
            included = [inc.source_type] if inc.source_type else None
        elif inc.target_type:
            included = [inc.target_type]
        elif inc.param and inc.source_type:
            included = list(search_params(inc.source_type)[inc.param].targets) or None
        else:
            included = None
        if included is not None and len(included) == 1:
            if not principal.allows("read", included[0]):
                return "false"
            return type_access_sql(b, principal, "read", included[0], "r", self.local_base)
        if included is None and principal.reaches_everything("read"):
            return None
        return any_type_access_sql(b, principal, "read", "r", self.local_base, included)


def _require_for(principal: Principal, interaction: str, resource: Any, resource_type: str | None) -> None:
    """The type-level right for a write of resource, checked before it is validated."""
    named = resource.get("resourceType") if isinstance(resource, dict) else None
    rtype = resource_type or (named if isinstance(named, str) else None)
    if rtype is not None:
        principal.require(interaction, rtype)


def _contained_entries(rows: list[Any]) -> list[StoredResource]:
    """The matches of a `_containedType=contained` page: a row with a contained_id
    stands for that contained resource of the container the row holds."""
    out = []
    for r in rows:
        cid = r["contained_id"]
        if cid is None:
            out.append(StoredResource(r[0], r[1], r[2], r[3], r[4]))
            continue
        container = orjson.loads(r[4])
        item = next((x for x in container.get("contained") or () if isinstance(x, dict) and x.get("id") == cid), None)
        if item is not None:  # always, unless the index lags the content
            holder = r[1].partition("#")[0]  # the key: ContainerType/containerId#containedId
            out.append(StoredResource(r[0], cid, r[2], r[3], orjson.dumps(item), container=holder))
    return out


def _check_contained_access(principal: Principal, compartment: Compartment | None) -> None:
    """A `_contained=true|both` search answers with (or cuts its results from) the
    containers, which may be of any type: the caller must be able to read every type,
    and a compartment (which restricts by the searched type) cannot scope it."""
    if not principal.reaches_everything("search"):
        raise FhirError.of(
            403,
            "forbidden",
            "_contained searches return the containers, of any type: they need read access to every resource type",
        )
    if compartment is not None:
        raise FhirError.of(400, "not-supported", "_contained=true|both cannot be used in a compartment search")


def _compartment_restriction(types: list[str], compartment: Compartment | None) -> Restrict | None:
    """alias -> "the row is in the compartment" (for each of the searched types)."""
    if compartment is None:
        return None

    def restrict(b: SqlBuilder, alias: str) -> str:
        if len(types) == 1:
            return compartment_sql(b, compartment, types[0], alias)
        return (
            "("
            + " OR ".join(
                f"({alias}.resource_type = {b.arg(t)} AND {compartment_sql(b, compartment, t, alias)})" for t in types
            )
            + ")"
        )

    # a care period reads the row's dates; several types read its type
    return Restrict(restrict, id_only=len(types) == 1 and compartment.period is None)


def _reads_row(principal: Principal, types: list[str]) -> bool:
    """Whether principal's restriction reads row columns besides the id (`_lastUpdated`
    in scope or policy rule criteria; the type in a search of several types)."""
    if len(types) > 1 or ANY_TYPE in types:
        return True
    scopes = principal.access("search", types[0]) or ()
    return any(name.split(":")[0] == "_lastUpdated" for s in scopes for name, _ in s.criteria)


def conditional_update_id(resource: Resource, found: StoredResource | None) -> str | None:
    """The id a conditional update writes: the match's (a body id must agree, else 400),
    or with no match the body's id (update as create), or None for a new id."""
    body_id = resource.get("id")
    if found is None:
        return body_id
    if body_id is not None and body_id != found.id:
        raise FhirError.of(
            400, "invalid", f"the body's id '{body_id}' differs from the matched {found.resource_type}/{found.id}", "id"
        )
    return found.id


def _version_conflict(resource_type: str, rid: str, wanted: Versions | int, current: int | None) -> FhirError:
    now = f" (current version is {current})" if current is not None else ""
    return FhirError.of(
        412,
        "conflict",
        f"{resource_type}/{rid}: If-Match version {etag.describe(wanted)} is not the current version{now}",
    )
