"""transaction and batch Bundles (http://hl7.org/fhir/R4/http.html#transaction).

A transaction runs in one database transaction: identities are settled first (new
ids for creates, conditional creates/updates/deletes resolved by search), then every
reference to a bundle-local fullUrl or a conditional reference is rewritten, then
entries run in the specification's order (DELETE, POST, PUT/PATCH, GET) and all
creates go to the database in one batched statement. Any failure rolls everything
back and is reported against the entry that caused it. A batch runs each entry on
its own and reports each entry's outcome.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from ..auth.principal import Principal
from ..fhir import json as fhir_json
from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError, Issue, operation_outcome
from ..fhir.patch import apply_fhirpath_patch, apply_json_patch
from ..fhir.references import RESOURCE_ID, iter_references, local_path
from ..search.criteria import Criteria, conditional_criteria
from .etag import Versions, parse_etags
from .ids import new_id
from .model import SearchPage, StoredResource
from .repository import PreparedCreate, ResourceStore, conditional_update_id, format_instant

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}
_WRITES = ("DELETE", "POST", "PUT", "PATCH")


@dataclass
class Entry:
    index: int
    method: str
    url: str
    path: list[str]
    query: list[tuple[str, str]]
    resource: dict[str, Any] | None
    full_url: str | None
    request: dict[str, Any]
    # settled while processing
    criteria: Criteria | None = None  # of a conditional write (ifNoneExist, `Type?criteria` url)
    target_id: str | None = None
    deletes: list[str] = field(default_factory=list)  # the ids a DELETE entry deletes
    matched: StoredResource | None = None
    skip: bool = False
    page: SearchPage | None = None  # a GET search entry's result
    content: bytes | None = None  # a GET metadata entry's CapabilityStatement
    # `Type?criteria` references: the Reference objects holding them, to resolve in place
    conditional_refs: list[dict[str, Any]] = field(default_factory=list)
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


def _require_rights(principal: Principal, entry: Entry) -> None:
    """403 unless the principal may perform the entry's interaction on its type at all
    (rows are checked where they are touched, as on REST)."""
    if entry.path == ["metadata"]:
        return
    rtype = entry.path[0]
    if entry.method in ("GET", "HEAD"):
        path = entry.path
        if any(p.startswith("$") for p in path):
            return  # an operation checks its own rights
        n = len(path)
        if n == 3 and path[2] != "_history":  # compartment search: Patient/1/Observation
            rtype = path[2]
        if n == 1 or path[1] == "_history" or (n == 3 and path[2] != "_history"):
            interaction = "search"  # type search or history, compartment search
        else:
            interaction = "vread" if n == 4 else "history" if n == 3 else "read"
    else:
        interaction = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[entry.method]
    principal.require(interaction, rtype)
    if entry.method == "POST" and entry.resource is not None:
        named = entry.resource.get("resourceType")
        if isinstance(named, str) and named != rtype:
            principal.require("create", named)


def _fail(entry: Entry, error: FhirError) -> FhirError:
    """The error, reported against the entry that caused it."""
    what = f"{entry.where}: {entry.method} {entry.url} failed"
    return FhirError(error.status, [Issue("error", "processing", what, entry.where), *error.issues])


def parse_entries(bundle: dict[str, Any], base_url: str | None) -> list[Entry]:
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError.of(400, "structure", "Bundle.entry must be an array", "Bundle.entry")
    out = []
    types = definitions().resource_types
    full_urls: dict[str, int] = {}
    for i, raw in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
            raise FhirError.of(400, "required", f"{where} has no request", f"{where}.request")
        request = raw["request"]
        method, url = request.get("method"), request.get("url")
        if method not in _ORDER or not isinstance(url, str) or not url:
            raise FhirError.of(400, "invalid", f"{where}: request needs a method and url", f"{where}.request")
        url = local_path(url, base_url) or url
        if "?" in url or ":" in url:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc:
                raise FhirError.of(
                    400, "invalid", f"{where}: url '{url}' is not on this server", f"{where}.request.url"
                )
            path_text, query = parts.path, parse_qsl(parts.query, keep_blank_values=True)
        else:  # the common case, `Type` or `Type/id`: no parsing needed
            path_text, query = url, []
        path = [p for p in path_text.split("/") if p]
        resource = raw.get("resource")
        if resource is not None and not isinstance(resource, dict):
            raise FhirError.of(400, "structure", f"{where}.resource must be a resource", f"{where}.resource")
        if method in ("POST", "PUT") and resource is None:
            raise FhirError.of(400, "required", f"{where}: {method} needs a resource", f"{where}.resource")
        if not path or (path[0] not in types and not (path == ["metadata"] and method in ("GET", "HEAD"))):
            raise FhirError.of(
                400,
                "invalid",
                f"{where}: '{url}' does not name a resource type",
                f"{where}.request.url",
            )
        if path[0] == "AuditEvent" and method not in ("GET", "HEAD"):  # the audit trail is append-only
            raise FhirError.of(405, "not-supported", f"{where}: AuditEvents cannot be {method} through the API")
        _check_url(method, path, query, url, where)
        full_url = raw.get("fullUrl")
        if isinstance(full_url, str):  # bdl-7: fullUrl is unique in a bundle
            if full_url in full_urls:
                raise FhirError.of(
                    400,
                    "invalid",
                    f"{where}: fullUrl '{full_url}' is also Bundle.entry[{full_urls[full_url]}]'s (bdl-7)",
                    f"{where}.fullUrl",
                )
            full_urls[full_url] = i
        out.append(
            Entry(
                i,
                method,
                url,
                path,
                query,
                resource,
                raw.get("fullUrl"),
                request,
            )
        )
    return out


def _check_url(method: str, path: list[str], query: list[tuple[str, str]], url: str, where: str) -> None:
    """A write's url is `Type` (POST, or conditional with criteria) or `Type/id`;
    anything after it (`Patient/1/foo`, `Patient/1/_history/2`) is refused, not ignored."""
    if method not in _WRITES:
        return  # reads: the shapes _read() serves, else 400 there
    if method == "POST":
        ok = len(path) == 1
    else:
        ok = len(path) == 1 or (len(path) == 2 and RESOURCE_ID.fullmatch(path[1]) is not None and not query)
    if not ok:
        expected = "Type" if method == "POST" else "Type/id or Type?criteria"
        raise FhirError.of(400, "invalid", f"{where}: {method} url '{url}' must be {expected}", f"{where}.request.url")


def _etag_version(value: Any) -> Versions | None:
    """The versions `request.ifMatch` names, parsed as the If-Match header is."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise FhirError.of(400, "invalid", "request.ifMatch must be a string")
    return parse_etags(value, "ifMatch")


class BundleProcessor:
    def __init__(
        self,
        store: ResourceStore,
        principal: Principal,
        base_url: str | None,  # this server's FHIR base (None: no absolute URL is ours)
        *,
        conditional_delete: str = "single",  # EHR_CONDITIONAL_DELETE
        capabilities: Callable[[], bytes] | None = None,
    ):
        self.store = store
        self.principal = principal
        self.base_url = base_url
        self.conditional_delete = conditional_delete
        self.capabilities = capabilities  # the CapabilityStatement for `GET metadata` entries (REST's)

    # -- transaction --------------------------------------------------------------------

    async def transaction(
        self, bundle: dict[str, Any], *, representation: bool = False, conn: asyncpg.Connection | None = None
    ) -> BundleResult:
        """Run a transaction Bundle atomically (inside conn's transaction, when given)."""
        entries = parse_entries(bundle, self.base_url)
        if conn is not None:
            async with conn.transaction():
                await self._transaction(self.store.bound(conn), entries)
        else:
            async with self.store.transaction() as store:
                await self._transaction(store, entries)
        return self._result("transaction-response", entries, representation)

    async def _transaction(self, store: ResourceStore, entries: list[Entry]) -> None:
        for entry in entries:  # every entry's right first: one forbidden entry fails all, before any work
            try:
                _require_rights(self.principal, entry)
            except FhirError as exc:
                raise _fail(entry, exc) from None
        aliases = await self._settle_identities(store, entries)
        for entry in entries:
            if entry.resource is not None:
                try:
                    self._rewrite(entry, aliases)
                except FhirError as exc:
                    raise _fail(entry, exc) from None
        await self._resolve_conditional_references(store, entries)
        await self._run_all(store, [e for e in entries if e.method == "DELETE"])
        await self._create_all(store, entries)  # every POST, in one statement
        await self._run_all(store, [e for e in entries if e.method in ("PUT", "PATCH")])
        await self._run_all(store, [e for e in entries if e.method in ("GET", "HEAD")])

    async def _run_all(self, store: ResourceStore, entries: list[Entry]) -> None:
        for entry in entries:
            try:
                await self._run(store, entry)
            except FhirError as exc:
                raise _fail(entry, exc) from None

    async def _create_all(self, store: ResourceStore, entries: list[Entry]) -> None:
        pending = [e for e in entries if e.method == "POST" and not e.skip and not e.response]
        if not pending:
            return
        prepared: list[PreparedCreate] = []
        for entry in pending:
            try:
                assert entry.target_id is not None
                prepared.append(store.prepare_create(self.principal, entry.resource, entry.target_id, "POST"))
            except FhirError as exc:
                raise _fail(entry, exc) from None
        stored = await store.insert_prepared(prepared, self.principal)
        for entry, s in zip(pending, stored, strict=True):
            entry.response = self._entry_response(s, 201)
            entry.matched = s

    def _conditions(self, entries: list[Entry]) -> list[Criteria]:
        """Parse every conditional write's criteria (one rule with REST: search
        parameters only); returns them, to lock before anything is matched."""
        found: list[Criteria] = []
        for entry in entries:
            rtype = entry.path[0]
            try:
                if entry.method == "POST":
                    if_none_exist = entry.request.get("ifNoneExist")
                    if if_none_exist is not None:
                        if not isinstance(if_none_exist, str):
                            raise FhirError.of(400, "invalid", "ifNoneExist must be a string")
                        entry.criteria = conditional_criteria(rtype, if_none_exist, "create")
                elif entry.method in ("PUT", "PATCH", "DELETE") and len(entry.path) == 1:
                    entry.criteria = conditional_criteria(rtype, entry.query, entry.method.lower())
            except FhirError as exc:
                raise _fail(entry, exc) from None
            if entry.criteria is not None:
                found.append(entry.criteria)
        return found

    async def _settle_identities(self, store: ResourceStore, entries: list[Entry]) -> dict[str, str]:
        """Assign ids and resolve conditional URLs; returns fullUrl -> Type/id.

        The criteria of every conditional write are locked first (in one order for
        all transactions), so a concurrent conditional create or update with the same
        criteria waits for this transaction instead of creating a duplicate.
        """
        conditions = self._conditions(entries)
        if len(entries) > 1:
            _refuse_shared_criteria(entries, self.base_url)
        await store.lock(conditions)
        aliases: dict[str, str] = {}
        for entry in entries:
            rtype = entry.path[0]
            try:
                if entry.method == "POST":
                    if entry.resource is not None and entry.resource.get("resourceType") != rtype:
                        raise FhirError.of(400, "invalid", f"resourceType does not match '{entry.url}'")
                    if entry.criteria is not None:
                        found = await store.match(self.principal, entry.criteria)
                        if found is not None:
                            entry.skip, entry.matched, entry.target_id = True, found, found.id
                            entry.response = self._entry_response(found, 200)
                    if entry.target_id is None:
                        entry.target_id = new_id()
                elif entry.criteria is not None:  # conditional PUT, PATCH or DELETE
                    await self._settle_conditional(store, entry)
                elif entry.method in ("PUT", "PATCH", "DELETE"):
                    entry.target_id = entry.path[1]
                    if entry.method == "DELETE":
                        entry.deletes = [entry.target_id]
            except FhirError as exc:
                raise _fail(entry, exc) from None
            if entry.full_url and entry.target_id and entry.method in ("POST", "PUT"):
                aliases[entry.full_url] = f"{rtype}/{entry.target_id}"
        if len(entries) > 1:
            _refuse_overlaps(entries)
        return aliases

    async def _settle_conditional(self, store: ResourceStore, entry: Entry) -> None:
        criteria = entry.criteria
        assert criteria is not None
        if entry.method == "DELETE":
            if self.conditional_delete == "multiple":
                entry.deletes = [r.id for r in await store.matches_to_delete(self.principal, criteria)]
            else:
                found = await store.match(self.principal, criteria)
                entry.deletes = [found.id] if found is not None else []
            if not entry.deletes:
                entry.skip = True
                entry.response = {"status": "204 No Content"}
            return
        found = await store.match(self.principal, criteria)
        if entry.method == "PUT":
            assert entry.resource is not None
            entry.target_id = conditional_update_id(entry.resource, found) or new_id()
        elif found is None:
            raise FhirError.of(404, "not-found", f"PATCH {entry.url} matched nothing")
        else:
            entry.target_id = found.id

    def _rewrite(self, entry: Entry, aliases: dict[str, str]) -> None:
        """Point bundle-local references at their targets; note conditional ones."""
        assert entry.resource is not None
        # a PUT may omit the id; one that differs from the url's or the match's is 400
        # (checked when settling a conditional PUT, and by update() for `Type/id`)
        if entry.method == "PUT" and entry.target_id is not None and "id" not in entry.resource:
            entry.resource["id"] = entry.target_id
        types = definitions().resource_types

        for holder in iter_references(entry.resource):
            ref = holder["reference"]
            if ref in aliases:
                holder["reference"] = aliases[ref]
                continue
            relative = local_path(ref, self.base_url)
            if relative is not None:  # our own base: the same as the relative form
                ref = holder["reference"] = relative
            if "?" in ref and ref.split("?", 1)[0] in types:
                entry.conditional_refs.append(holder)
            elif ref.startswith("urn:uuid:") or ref.startswith("urn:oid:"):
                raise FhirError.of(400, "not-found", f"reference '{ref}' matches no fullUrl in the bundle")

    async def _resolve_conditional_references(self, store: ResourceStore, entries: list[Entry]) -> None:
        """Replace `Type?criteria` references with the one resource they match."""
        cache: dict[str, str] = {}
        for entry in entries:
            for holder in entry.conditional_refs:
                ref = holder["reference"]
                rtype = ref.split("?", 1)[0]
                try:
                    criteria = conditional_criteria(rtype, ref, "reference")
                    if criteria.canonical not in cache:
                        found = await store.match(self.principal, criteria)
                        if found is None:
                            raise FhirError.of(412, "not-found", f"conditional reference '{ref}' matches nothing")
                        cache[criteria.canonical] = f"{rtype}/{found.id}"
                except FhirError as exc:
                    raise _fail(entry, exc) from None
                holder["reference"] = cache[criteria.canonical]

    async def _run(self, store: ResourceStore, entry: Entry) -> None:
        """Run one non-create entry (also used by batch)."""
        if entry.skip:
            return
        rtype = entry.path[0]
        if_match = _etag_version(entry.request.get("ifMatch"))
        if entry.method == "PUT":
            assert entry.target_id is not None
            outcome = await store.update(self.principal, rtype, entry.target_id, entry.resource, if_match=if_match)
            entry.matched = outcome.stored
            entry.response = self._entry_response(outcome.stored, 201 if outcome.created else 200)
        elif entry.method == "DELETE":
            for rid in entry.deletes:
                await store.delete(self.principal, rtype, rid, if_match=if_match)
            entry.response = {"status": "204 No Content"}
        elif entry.method == "PATCH":
            assert entry.target_id is not None
            apply = _bundle_patch(entry.resource)
            outcome = await store.patch(self.principal, rtype, entry.target_id, apply, if_match=if_match)
            entry.matched = outcome.stored
            entry.response = self._entry_response(outcome.stored, 200)
        elif entry.method in ("GET", "HEAD"):
            await self._read(store, entry)

    async def _read(self, store: ResourceStore, entry: Entry) -> None:
        rtype, path = entry.path[0], entry.path
        if path == ["metadata"]:
            if self.capabilities is None:
                raise FhirError.of(400, "not-supported", "GET metadata is not supported here")
            entry.content = self.capabilities()
            entry.response = {"status": "200 OK"}
            return
        if len(path) == 1:
            entry.page = await store.search(self.principal, rtype, entry.query)
            entry.response = {"status": "200 OK"}
            return
        if len(path) == 2:
            stored = await store.read(self.principal, rtype, path[1])
        elif len(path) == 4 and path[2] == "_history":
            stored = await store.vread(self.principal, rtype, path[1], path[3])
        else:
            raise FhirError.of(400, "not-supported", f"GET {entry.url} is not supported in a bundle")
        entry.matched = stored
        entry.response = self._entry_response(stored, 200)

    # -- batch --------------------------------------------------------------------------

    async def batch(
        self, bundle: dict[str, Any], *, representation: bool = False, conn: asyncpg.Connection | None = None
    ) -> BundleResult:
        """Run each entry on its own; with conn, all inside conn's transaction, each entry
        in a savepoint (a failed entry undoes only itself), so they commit together."""
        entries = parse_entries(bundle, self.base_url)
        for entry in entries:
            try:
                if conn is None:
                    await self._batch_entry(entry)
                else:
                    async with conn.transaction():
                        await self._batch_run(self.store.bound(conn), entry)
            except asyncpg.QueryCanceledError:  # statement_timeout: this entry's work was rolled back
                entry.matched = None
                error = FhirError.of(503, "too-costly", f"{entry.where}: a statement ran past the statement timeout")
                entry.response = {"status": "503", "outcome": operation_outcome(error.issues)}
            except FhirError as exc:
                entry.matched = None
                entry.response = {
                    "status": f"{exc.status}",
                    "outcome": operation_outcome(exc.issues),
                }
        return self._result("batch-response", entries, representation)

    async def _batch_entry(self, entry: Entry) -> None:
        conditional = entry.request.get("ifNoneExist") is not None or (
            entry.method in ("PUT", "PATCH", "DELETE") and len(entry.path) == 1
        )
        if not conditional:
            await self._batch_run(self.store, entry)
            return
        # match and write in one transaction under the criteria's lock, as on REST
        async with self.store.transaction() as store:
            await self._batch_run(store, entry)

    async def _batch_run(self, store: ResourceStore, entry: Entry) -> None:
        _require_rights(self.principal, entry)
        await self._settle_identities(store, [entry])
        if entry.method == "POST":
            if entry.skip:
                return
            assert entry.target_id is not None
            prepared = store.prepare_create(self.principal, entry.resource, entry.target_id, "POST")
            (stored,) = await store.insert_prepared([prepared], self.principal)
            entry.matched = stored
            entry.response = self._entry_response(stored, 201)
            return
        await self._run(store, entry)

    # -- responses ----------------------------------------------------------------------

    def _entry_response(self, stored: StoredResource, status: int) -> dict[str, Any]:
        return {
            "status": _STATUS_TEXT.get(status, str(status)),
            "location": f"{stored.resource_type}/{stored.id}/_history/{stored.version_id}",
            "etag": f'W/"{stored.version_id}"',
            "lastModified": format_instant(stored.last_updated),
        }

    def _result(self, kind: str, entries: list[Entry], representation: bool) -> BundleResult:
        items = []
        for entry in entries:
            with_body = representation or entry.method in ("GET", "HEAD")
            items.append(ResultItem(entry.response, entry.matched, entry.page, with_body, entry.content))
        return BundleResult(kind, items)


@dataclass
class ResultItem:
    """One response entry: its response element, and what to show as its resource."""

    response: dict[str, Any]
    stored: StoredResource | None
    page: SearchPage | None
    with_resource: bool
    content: bytes | None = None  # a resource not stored (the CapabilityStatement)


@dataclass
class BundleResult:
    type: str  # transaction-response | batch-response
    items: list[ResultItem]


def _bundle_patch(resource: dict[str, Any] | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A PATCH entry's patch: a FHIRPath Patch Parameters, or a Binary holding JSON Patch."""
    if resource is None:
        raise FhirError.of(400, "required", "a PATCH entry needs a Parameters or Binary resource")
    if resource.get("resourceType") == "Parameters":
        return lambda current: apply_fhirpath_patch(current, resource)
    if resource.get("resourceType") == "Binary" and resource.get("contentType") == "application/json-patch+json":
        try:
            operations = fhir_json.loads(base64.b64decode(resource.get("data", ""), validate=True))
        except (ValueError, fhir_json.JsonError) as exc:
            raise FhirError.of(400, "invalid", f"the Binary does not hold a JSON Patch: {exc}") from None
        return lambda current: apply_json_patch(current, operations)
    raise FhirError.of(400, "invalid", "a PATCH entry needs a Parameters or a JSON Patch Binary resource")


def _refuse_shared_criteria(entries: list[Entry], base_url: str | None) -> None:
    """Two conditional writes with the same criteria resolve to the same resource (or
    would both create one): overlapping identities fail the transaction (trules).
    "The same" as the lock sees it: values on our base count as their relative form."""
    seen: dict[tuple[str, int], Entry] = {}
    for entry in entries:
        if entry.criteria is None:
            continue
        key = (entry.criteria.resource_type, entry.criteria.lock_key_on(base_url))
        if key in seen:
            first = seen[key]
            raise _fail(
                entry,
                FhirError.of(
                    400,
                    "invalid",
                    f"{first.where} has the same conditional criteria '{entry.criteria.canonical}'; they overlap",
                ),
            )
        seen[key] = entry


def _refuse_overlaps(entries: list[Entry]) -> None:
    """R4 http.html#trules: DELETE, POST, PUT and PATCH entries may not resolve to the
    same resource (an id in the url, a conditional match, ifNoneExist's match)."""
    seen: dict[tuple[str, str], Entry] = {}
    for entry in entries:
        if entry.method not in _WRITES:
            continue
        rtype = entry.path[0]
        if entry.method == "DELETE":
            ids = entry.deletes
        elif entry.method == "POST" and not entry.skip:
            continue  # a new id, unique by construction
        else:
            ids = [entry.target_id] if entry.target_id else []
        for rid in ids:
            other = seen.get((rtype, rid))
            if other is not None and other is not entry:
                message = f"{rtype}/{rid} is also the target of {other.where}; transaction entries may not overlap"
                raise _fail(entry, FhirError.of(400, "invalid", message))
            seen[(rtype, rid)] = entry
