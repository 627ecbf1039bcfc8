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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg
import orjson

from ..auth.principal import Principal
from ..fhir import json as fhir_json
from ..fhir.outcome import FhirError, Issue, has_errors
from ..search.compartment import Compartment, compartment_sql
from ..search.criteria import Criteria
from ..search.custom import check_search_parameter
from ..search.extract import extract
from ..search.paging import decode_cursor, encode_cursor
from ..search.query import (
    MAX_INCLUDE_ITERATIONS,
    SearchRequest,
    count_query,
    cursor_for,
    include_sql,
    page_query,
    parse_request,
)
from ..search.rows import IndexRows
from ..search.sql import SqlBuilder
from . import sql
from .bulk import INSERT_MANY, insert_many_args
from .ids import new_id
from .model import HistoryPage, SearchPage, StoredResource, WriteOutcome

Resource = dict[str, Any]
Validate = Callable[[Any], list[Issue]]
Executor = asyncpg.Pool | asyncpg.Connection

_OPTIMISTIC_ATTEMPTS = 2
MAX_INCLUDED = 1000  # included resources per page
# Serialises conditional writes on their criteria (keys pre-sorted; unnest keeps the order).
_LOCK_CRITERIA = "SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k"


class PreparedCreate(NamedTuple):
    resource_type: str
    id: str
    content: bytes
    method: str
    rows: IndexRows


@dataclass(frozen=True, slots=True)
class _Write:
    """What to write as the next version: a resource, or None for a deletion."""

    resource: Resource | None
    method: str


@functools.lru_cache(maxsize=8)  # a bundle or import batch stamps hundreds with one ts
def format_instant(ts: datetime) -> str:
    """An R4 instant with the microseconds PostgreSQL stores, so _since compares exactly."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def with_meta(resource: Resource, rid: str, version: int, ts: datetime) -> Resource:
    """The resource with id and server-owned meta set; resourceType, id, meta lead."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = format_instant(ts)
    out: Resource = {"resourceType": resource["resourceType"], "id": rid, "meta": meta}
    for key, value in resource.items():
        if key not in out:
            out[key] = value
    return out


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
        local_base: str | None = None,
    ):
        self._db = db
        # this server's FHIR base: absolute references under it are local (search/extract)
        self.local_base = local_base
        # Searches vary so much by value (a rare code vs a common one) that a prepared
        # statement's generic plan is often 10x slower than a plan for the values at
        # hand; they run on connections that always plan for the actual values.
        self._search_db = search_db or db
        self._validate = validate
        self.max_page_size = max_page_size

    def bound(self, conn: asyncpg.Connection) -> ResourceStore:
        """The same store running its statements on conn (e.g. inside a transaction)."""
        return ResourceStore(conn, self._validate, self.max_page_size, local_base=self.local_base)

    def on_base(self, base: str | None) -> ResourceStore:
        """The same store for requests that came in on FHIR base `base`."""
        if base == self.local_base:
            return self
        found = copy.copy(self)
        found.local_base = base
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
        row = await self._db.fetchrow(sql.READ_CURRENT, resource_type, rid)
        if row is None:
            raise FhirError.of(404, "not-found", f"{resource_type}/{rid} is not known")
        stored = StoredResource(resource_type, rid, row[0], row[1], row[2])
        if stored.deleted:
            raise FhirError(
                410,
                [Issue("error", "deleted", f"{resource_type}/{rid} has been deleted")],
                {"ETag": f'W/"{stored.version_id}"'},
            )
        return stored

    async def vread(self, principal: Principal, resource_type: str, rid: str, version: str) -> StoredResource:
        principal.require("vread", resource_type)
        if not version.isdigit() or len(version) > 9:
            raise FhirError.of(404, "not-found", f"{resource_type}/{rid} has no version {version}")
        row = await self._db.fetchrow(sql.READ_VERSION, resource_type, rid, int(version))
        if row is None:
            raise FhirError.of(404, "not-found", f"{resource_type}/{rid} has no version {version}")
        stored = StoredResource(resource_type, rid, row[0], row[1], row[2], row[3])
        if stored.deleted:
            raise FhirError.of(410, "deleted", f"version {version} of {resource_type}/{rid} is a deletion")
        return stored

    # -- writes -------------------------------------------------------------------------

    async def _write(
        self,
        resource: Resource | None,
        resource_type: str,
        rid: str,
        version: int,
        method: str,
        previous: int | None,
    ) -> StoredResource | None:
        """Insert (previous None) or replace version `previous`; None when it lost a race."""
        ts = datetime.now(UTC)
        if resource is None:
            content, rows = None, IndexRows()
        else:
            final = with_meta(resource, rid, version, ts)
            content, rows = fhir_json.dumps(final), extract(final, local_base=self.local_base)
        mask, index = index_args(rows)
        args = [resource_type, rid, version, ts, content, method, *index]
        if previous is None:
            changed = await self._db.fetchval(sql.write_statement("insert", mask), *args)
        else:
            changed = await self._db.fetchval(sql.write_statement("update", mask), *args, previous)
        if not changed:
            return None
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
        self.check(resource, resource_type)
        resource_type = resource["resourceType"]
        principal.require("create", resource_type)
        if if_none_exist is not None:
            async with self._serialised(if_none_exist) as store:
                found = await store.match(principal, if_none_exist)
                if found is not None:
                    return WriteOutcome(found, created=False, matched=True)
                return await store._create(resource, resource_type, method)
        return await self._create(resource, resource_type, method)

    async def _create(self, resource: Resource, resource_type: str, method: str) -> WriteOutcome:
        stored = await self._write(resource, resource_type, new_id(), 1, method, None)
        assert stored is not None  # a fresh UUID cannot collide
        return WriteOutcome(stored, created=True)

    def prepare_create(
        self, principal: Principal, resource: Any, rid: str, method: str, ts: datetime
    ) -> PreparedCreate:
        """Validate and serialise a create with a chosen id, for insert_prepared()."""
        self.check(resource)
        resource_type = resource["resourceType"]
        principal.require("create", resource_type)
        final = with_meta(resource, rid, 1, ts)
        return PreparedCreate(
            resource_type, rid, fhir_json.dumps(final), method, extract(final, local_base=self.local_base)
        )

    async def insert_prepared(self, items: list[PreparedCreate], ts: datetime) -> list[StoredResource]:
        """Insert prepared creates in one statement (a duplicate id fails them all)."""
        if not items:
            return []
        try:
            await self._db.fetchval(INSERT_MANY, *insert_many_args(items, ts))
        except asyncpg.UniqueViolationError:
            raise FhirError.of(409, "duplicate", "a resource with one of these ids already exists") from None
        return [StoredResource(i[0], i[1], 1, ts, i[2], i[3]) for i in items]

    async def update(
        self,
        principal: Principal,
        resource_type: str,
        rid: str,
        resource: Any,
        *,
        if_match: int | None = None,
        method: str = "PUT",
    ) -> WriteOutcome:
        """Replace (or create with the client's id); If-Match makes it version-aware."""
        self.check(resource, resource_type)
        if resource.get("id") is None:
            raise FhirError.of(400, "required", "an update must carry the resource id", "id")
        if resource["id"] != rid:
            raise FhirError.of(400, "invalid", f"id '{resource['id']}' does not match the URL id '{rid}'", "id")
        principal.require("update", resource_type)

        def plan(current: asyncpg.Record | None) -> _Write:
            if current is None and if_match is not None:
                raise FhirError.of(412, "conflict", f"{resource_type}/{rid} does not exist (If-Match)")
            if current is not None and if_match is not None and if_match != current[0]:
                raise _version_conflict(resource_type, rid, if_match, current[0])
            return _Write(resource, method)

        stored, before = await self._versioned(resource_type, rid, plan)
        assert stored is not None
        return WriteOutcome(stored, created=before is None or before[2] is None)

    async def patch(
        self,
        principal: Principal,
        resource_type: str,
        rid: str,
        apply: Callable[[Resource], Resource],
        *,
        if_match: int | None = None,
    ) -> WriteOutcome:
        """Apply a patch function to the current version; the result is validated like an update."""
        principal.require("patch", resource_type)

        def plan(current: asyncpg.Record | None) -> _Write:
            if current is None:
                raise FhirError.of(404, "not-found", f"{resource_type}/{rid} is not known")
            if if_match is not None and if_match != current[0]:
                raise _version_conflict(resource_type, rid, if_match, current[0])
            if current[2] is None:
                raise FhirError.of(410, "deleted", f"{resource_type}/{rid} has been deleted")
            patched = apply(fhir_json.loads(current[2]))
            self.check(patched, resource_type)
            if patched.get("id") != rid:
                raise FhirError.of(422, "processing", "a patch may not change the resource id", "id")
            return _Write(patched, "PATCH")

        stored, _ = await self._versioned(resource_type, rid, plan)
        assert stored is not None
        return WriteOutcome(stored, created=False)

    async def delete(
        self, principal: Principal, resource_type: str, rid: str, *, if_match: int | None = None
    ) -> StoredResource | None:
        """Delete; returns the deletion version, or None when it was already deleted."""
        principal.require("delete", resource_type)

        def plan(current: asyncpg.Record | None) -> _Write | None:
            if current is None:
                raise FhirError.of(404, "not-found", f"{resource_type}/{rid} is not known")
            if if_match is not None and if_match != current[0]:
                raise _version_conflict(resource_type, rid, if_match, current[0])
            return None if current[2] is None else _Write(None, "DELETE")

        stored, _ = await self._versioned(resource_type, rid, plan)
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
        if current is None:
            return await self._write(step.resource, resource_type, rid, 1, step.method, None)
        version = current[0]
        return await self._write(step.resource, resource_type, rid, version + 1, step.method, version)

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
        async with self._transaction() as conn:
            store = self.bound(conn)
            await store.lock([criteria])
            yield store

    async def lock(self, criteria: list[Criteria]) -> None:
        """Take the advisory locks of criteria in this store's transaction, in key order
        so that two transactions locking several never deadlock on each other."""
        keys = sorted({c.lock_key for c in criteria})
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
        if_match: int | None = None,
    ) -> WriteOutcome:
        """Update the one match, or create when none matches (id from the body or new)."""
        resource_type = criteria.resource_type
        self.check(resource, resource_type)
        principal.require("update", resource_type)
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
        if_match: int | None = None,
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
                targets = await store.matches(principal, criteria)
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
        """Versions newest first, keyset-paged on (last_updated, seq)."""
        principal.require("history", resource_type or "*")
        count = max(0, min(count, self.max_page_size))
        where, args = [], []

        def arg(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        if resource_type:
            where.append(f"resource_type = {arg(resource_type)}")
        if rid:
            where.append(f"id = {arg(rid)}")
        if since is not None:
            where.append(f"last_updated >= {arg(since)}")
        total = None
        if rid and resource_type:  # cheap at instance level; omitted for type/system
            total = await self._db.fetchval(f"SELECT count(*) FROM resource_history WHERE {' AND '.join(where)}", *args)
        if cursor:
            state = decode_cursor(cursor)
            try:
                ts, seq = datetime.fromisoformat(state[0]), int(state[1])
            except (TypeError, ValueError, IndexError, KeyError):
                raise FhirError.of(400, "invalid", "malformed paging cursor") from None
            where.append(f"(last_updated, seq) < ({arg(ts)}, {arg(seq)})")
        clause = " WHERE " + " AND ".join(where) if where else ""
        rows = await self._db.fetch(
            f"SELECT {sql.HISTORY_COLUMNS} FROM resource_history{clause}"
            f" ORDER BY last_updated DESC, seq DESC LIMIT {count + 1}",
            *args,
        )
        entries = [StoredResource(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows[:count]]
        next_cursor = None
        if len(rows) > count and count:
            last = rows[count - 1]
            next_cursor = encode_cursor([last[3].isoformat(), last[6]])
        return HistoryPage(entries, next_cursor, total)

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
            local_base=self.local_base,
        )
        b = SqlBuilder()
        restriction = _compartment_restriction(types, compartment, b)
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
                cb = SqlBuilder()
                cr = _compartment_restriction(types, compartment, cb)
                total = await self._search_db.fetchval(count_query(request, cr, cb), *cb.args)
        elif request.total == "estimate":
            total = await self._estimate(request, compartment, types)
        included = await self._includes(principal, request, entries)
        return SearchPage(entries, total, next_cursor, prev_cursor, request.issues, included, request)

    async def _estimate(self, request: SearchRequest, compartment: Compartment | None, types: list[str]) -> int:
        b = SqlBuilder()
        restriction = _compartment_restriction(types, compartment, b)
        plan = await self._search_db.fetchval(
            "EXPLAIN (FORMAT JSON) " + count_query(request, restriction, b).replace("count(*)", "1", 1),
            *b.args,
        )
        data = plan if isinstance(plan, list) else orjson.loads(plan)
        return int(data[0]["Plan"]["Plan Rows"])

    async def _includes(
        self, principal: Principal, request: SearchRequest, matches: list[StoredResource]
    ) -> list[StoredResource]:
        """_include and _revinclude targets of the matches (iterating where asked)."""
        if not request.includes or not matches:
            return []
        seen = {(m.resource_type, m.id) for m in matches}
        found: list[StoredResource] = []
        frontier = list(matches)
        for round_ in range(MAX_INCLUDE_ITERATIONS):
            wanted = [inc for inc in request.includes if round_ == 0 or inc.iterate]
            if not wanted or not frontier:
                break
            fresh: list[StoredResource] = []
            for inc in wanted:
                b = SqlBuilder()
                statement = include_sql(b, inc, frontier)
                if statement is None:
                    continue
                for r in await self._search_db.fetch(statement, *b.args):
                    key = (r[0], r[1])
                    if key in seen or not principal.allows("read", r[0]):
                        continue
                    seen.add(key)
                    fresh.append(StoredResource(r[0], r[1], r[2], r[3], r[4]))
                    if len(found) + len(fresh) >= MAX_INCLUDED:
                        break
            found += fresh
            frontier = fresh
            if len(found) >= MAX_INCLUDED:
                break
        return found


def _compartment_restriction(
    types: list[str], compartment: Compartment | None, b: SqlBuilder
) -> Callable[[str], str] | None:
    """alias -> "the row is in the compartment" (for each of the searched types)."""
    if compartment is None:
        return None

    def restrict(alias: str) -> str:
        if len(types) == 1:
            return compartment_sql(b, compartment, types[0], alias)
        return " OR ".join(
            f"({alias}.resource_type = {b.arg(t)} AND {compartment_sql(b, compartment, t, alias)})" for t in types
        )

    return restrict


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


def _version_conflict(resource_type: str, rid: str, wanted: int, current: int | None) -> FhirError:
    now = f" (current version is {current})" if current is not None else ""
    return FhirError.of(
        412,
        "conflict",
        f"{resource_type}/{rid}: If-Match version {wanted} is not the current version{now}",
    )
