"""Assembly: settings, database, validator and routes into one Starlette app."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from .audit.recorder import AuditRecorder
from .auth.admin_api import admin_routes
from .auth.audit_trail import record_key_rotation
from .auth.authenticate import authenticate_as_system, token_authenticator
from .auth.bootstrap import ensure_admin_client
from .auth.external import TrustedIssuer
from .auth.keys import SigningKeys
from .auth.policies import Policies
from .auth.ratelimit import AddressRateLimit, RateLimits, limit_clients
from .auth.routes import oauth_routes
from .auth.tokens import AccessTokens
from .bulk.async_worker import AsyncWorker
from .bulk.export_s3 import S3Bucket
from .bulk.export_worker import ExportWorker
from .bulk.import_worker import ImportWorker
from .config import Settings
from .db.migrate import migrate
from .db.periodic import cancel
from .db.pool import AUDIT_APPLICATION, create_pool
from .events.delivery_log import delivery_log_routes
from .events.service import start_events, store_hooks
from .fhir.definitions import definitions
from .fhir.outcome import FhirError
from .fhir.validation import validate_with, validator
from .rest import asynchronous
from .rest.origin import networks
from .rest.responses import DateHeader, outcome_response
from .rest.router import fhir_endpoint
from .rest.websocket import websocket_endpoint
from .search.extract import OPTIONS
from .search.extract.compile import set_expression_budget
from .search.query import SearchLimits
from .search.registry import search_params
from .store import ResourceStore
from .store.reindex import Reindexer, load_registry, poll_registry

log = logging.getLogger("headless_ehr")

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def _http_error(request: Request, exc: Exception) -> Response:
    """Errors outside the FHIR base (Starlette's routing): an OperationOutcome that says where the base is."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        settings = request.app.state.settings
        base = settings.public_base_url or settings.base_path
        message = f"no FHIR endpoint at '{request.url.path[:200]}': the FHIR base is {base} (e.g. {base}/metadata)"
        return outcome_response(request, FhirError.of(404, "not-found", message))
    return outcome_response(request, FhirError.of(exc.status_code, "processing", str(exc.detail)))


async def _close_audit(app: Starlette, recorder: AuditRecorder) -> None:
    await recorder.close()
    app.state.audit = None


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app; its lifespan opens the pool and applies migrations.

    settings.database_url must be set (the CLI starts embedded PostgreSQL first).
    """
    settings = settings or Settings.from_env()
    OPTIONS.contained = settings.index_contained  # extraction is process-wide: the last app configured wins
    networks(settings.trusted_proxies)  # a malformed EHR_TRUSTED_PROXIES fails now, not on a request
    if settings.trusted_issuer and not settings.trusted_audience:
        raise ValueError("EHR_TRUSTED_AUDIENCE is required with EHR_TRUSTED_ISSUER")
    rate_limits = RateLimits.of(settings)  # None when EHR_RATE_LIMIT_PER_MINUTE=0

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not settings.database_url:
            raise RuntimeError("no database: set EHR_DATABASE_URL or start through `ehr serve`")
        # every resource is closed, in reverse order, on shutdown and also when a later
        # start step fails: a failed start leaks no pool, task or connection
        async with contextlib.AsyncExitStack() as stack:
            await _start(app, stack)
            yield

    async def _start(app: Starlette, stack: contextlib.AsyncExitStack) -> None:
        if rate_limits is not None:
            stack.push_async_callback(rate_limits.close)
        defs = definitions()
        _ = defs.resource_types  # load definitions before the first request
        timeout = settings.statement_timeout_ms
        pool = await create_pool(
            settings.database_url,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            statement_timeout_ms=timeout,
        )
        stack.push_async_callback(pool.close)
        async with pool.acquire() as conn:
            # start-up work (migrations wait for other nodes' lock) is not a request
            await conn.execute("SET statement_timeout = 0")
            try:
                applied = await migrate(conn)
                await load_registry(conn)
            finally:
                await conn.execute("RESET statement_timeout")
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        set_expression_budget(settings.search_expression_budget_ms / 1000)
        search_pool = await create_pool(
            settings.database_url,
            min_size=1,
            max_size=settings.pool_max_size,
            custom_plans=True,
            statement_timeout_ms=timeout,
        )
        stack.push_async_callback(search_pool.close)
        app.state.pool = pool
        limits = SearchLimits(max_chain_branches=settings.max_chain_branches, max_includes=settings.max_includes)
        app.state.store = ResourceStore(
            pool,
            validate_with(settings),
            settings.max_page_size,
            search_pool,
            limits=limits,
            local_base=settings.public_base_url,
            hooks=store_hooks(),  # Subscriptions and SubscriptionTopics keep their state (events/)
        )
        keys = SigningKeys(pool, timedelta(hours=settings.signing_key_rotation_hours))
        await keys.start()
        stack.push_async_callback(keys.close)
        tokens = AccessTokens(pool, keys, settings.access_token_lifetime)
        await tokens.start()
        stack.push_async_callback(tokens.close)
        app.state.signing_keys, app.state.tokens = keys, tokens
        await ensure_admin_client(pool, settings)  # first start: an admin client, in <data dir>/admin-client.json
        trusted = None
        if settings.trusted_issuer and settings.trusted_audience:
            trusted = TrustedIssuer(
                settings.trusted_issuer, settings.trusted_audience, settings.trusted_fhir_user_claim
            )
            stack.push_async_callback(trusted.close)
        app.state.policies = policies = Policies(pool, settings.trusted_policies)
        await policies.start()
        stack.push_async_callback(policies.close)
        authenticate = token_authenticator(tokens, trusted, policies) if settings.auth else authenticate_as_system
        if not settings.auth:
            log.warning(
                "EHR_AUTH=off: no access tokens are asked for and every request acts as the system;"
                " for local experiments and benchmarks only, never with real data"
            )
        app.state.authenticate = authenticate if rate_limits is None else limit_clients(authenticate, rate_limits)
        if settings.audit:  # AuditEvents into the hash chain (audit/), in batches before each response
            audit_pool = await create_pool(
                settings.database_url,
                min_size=1,
                max_size=3,  # one batch and one chaining at a time, and a spare
                statement_timeout_ms=timeout,
                application_name=AUDIT_APPLICATION,
            )
            stack.push_async_callback(audit_pool.close)
            app.state.audit = recorder = AuditRecorder(audit_pool, sync=settings.audit_sync_commit)
            recorder.start()
            stack.push_async_callback(_close_audit, app, recorder)
            keys.rotated = functools.partial(record_key_rotation, app)  # later rotations are audited
        # $export and $import jobs (bulk/): their own connections, planned for their values like
        # searches; a page of a compartment export may take longer than a request's statement,
        # not for ever. An export holds one while it runs; claims, leases and status use the rest.
        bulk_pool = await create_pool(
            settings.database_url, min_size=1, max_size=4, custom_plans=True, statement_timeout_ms=timeout * 10
        )
        stack.push_async_callback(bulk_pool.close)
        app.state.bulk_pool = bulk_pool
        app.state.bulk_bucket = bucket = S3Bucket(settings.bulk_s3_url) if settings.bulk_s3_url else None
        app.state.exports = exports = ExportWorker(bulk_pool, settings, bucket)
        if settings.bulk_export_jobs:  # else an API-only node: other nodes run its jobs
            exports.start()
        stack.push_async_callback(exports.close)
        # $import inputs: their units of lines on connections of their own (a unit is a long write)
        import_pool = await create_pool(
            settings.database_url,
            min_size=0,
            max_size=settings.bulk_import_concurrency + 1,
            statement_timeout_ms=timeout * 10,
        )
        stack.push_async_callback(import_pool.close)
        app.state.imports = imports = ImportWorker(bulk_pool, import_pool, app.state.store, settings, bucket)
        if settings.bulk_import_jobs:  # else an API-only node: other nodes load its inputs
            imports.start()
        stack.push_async_callback(imports.close)
        # asynchronous requests (Prefer: respond-async): replayed through the FHIR endpoint on any node
        app.state.async_requests = async_requests = AsyncWorker(
            pool, functools.partial(asynchronous.execute, app, fhir_endpoint)
        )
        async_requests.start()
        stack.push_async_callback(async_requests.close)
        app.state.reindexer = Reindexer(pool, sorted(defs.resource_types))
        stack.push_async_callback(app.state.reindexer.close)
        poller = asyncio.create_task(poll_registry(pool))
        stack.push_async_callback(cancel, poller)
        await app.state.reindexer.resume_stale(settings.public_base_url)
        await start_events(app, stack, settings)  # the outbox relay and the event workers (events/)
        check = validator()
        for rtype in defs.resource_types:  # compile every type's rules now, not on a request
            check.validate({"resourceType": rtype})
            search_params(rtype)  # and its search parameters (the first /metadata needs all)
        # Start-up allocates long-lived objects (definitions, compiled validators);
        # freezing them keeps full GC passes, which pause the event loop, short.
        gc.collect()
        gc.freeze()
        # Requests allocate many short-lived containers (a transaction Bundle tens of
        # thousands); collecting every 700 allocations costs more than it frees.
        gc.set_threshold(10_000, 20, 20)

    base = settings.base_path.rstrip("/")
    middleware = [Middleware(DateHeader)]
    if rate_limits is not None:  # per source address; per client in the authenticator (lifespan)
        prefixes = (base, "/oauth", "/admin")
        middleware.append(Middleware(AddressRateLimit, rate_limits, prefixes, settings.trusted_proxies))
    app = Starlette(
        routes=[
            *oauth_routes(base),  # the authorisation server (auth/routes.py), ahead of the FHIR catch-all
            # the WebSocket channel of Subscriptions (R4 and backport protocols; events/websocket.py)
            WebSocketRoute(base + "/ws", websocket_endpoint),
            WebSocketRoute("/ws/subscriptions", websocket_endpoint),
            Route(base, fhir_endpoint, methods=_METHODS),
            Route(base + "/{path:path}", fhir_endpoint, methods=_METHODS),
            *admin_routes(),
            *delivery_log_routes(),
        ],
        exception_handlers={HTTPException: _http_error},
        middleware=middleware,
        lifespan=lifespan,
    )
    app.state.settings = settings
    # who is asking (auth/): the token authenticator once the keys are loaded, unless EHR_AUTH=off
    app.state.authenticate = authenticate_as_system
    app.state.audit = None  # the AuditRecorder once the pool is open, unless EHR_AUDIT=off
    return app
