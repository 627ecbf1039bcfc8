"""Assembly: settings, database, validator and routes into one Starlette app."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .auth.principal import authenticate_as_system
from .config import Settings
from .db.migrate import migrate
from .db.pool import create_pool
from .fhir.definitions import definitions
from .fhir.outcome import FhirError
from .fhir.validation import validator
from .rest.origin import networks
from .rest.responses import outcome_response
from .rest.router import fhir_endpoint
from .search.extract import OPTIONS
from .search.extract.compile import set_expression_budget
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


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app; its lifespan opens the pool and applies migrations.

    settings.database_url must be set (the CLI starts embedded PostgreSQL first).
    """
    settings = settings or Settings.from_env()
    OPTIONS.contained = settings.index_contained  # extraction is process-wide: the last app configured wins
    networks(settings.trusted_proxies)  # a malformed EHR_TRUSTED_PROXIES fails now, not on a request

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not settings.database_url:
            raise RuntimeError("no database: set EHR_DATABASE_URL or start through `ehr serve`")
        defs = definitions()
        _ = defs.resource_types  # load definitions before the first request
        pool = await create_pool(
            settings.database_url, min_size=settings.pool_min_size, max_size=settings.pool_max_size
        )
        async with pool.acquire() as conn:
            applied = await migrate(conn)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        await load_registry(pool)
        set_expression_budget(settings.search_expression_budget_ms / 1000)
        search_pool = await create_pool(
            settings.database_url, min_size=1, max_size=settings.pool_max_size, custom_plans=True
        )
        app.state.pool = pool
        app.state.store = ResourceStore(
            pool, validator().validate, settings.max_page_size, search_pool, local_base=settings.public_base_url
        )
        app.state.reindexer = Reindexer(pool, sorted(defs.resource_types))
        poller = asyncio.create_task(poll_registry(pool))
        await app.state.reindexer.resume_stale()
        check = validator()
        for rtype in defs.resource_types:  # compile every type's rules now, not on a request
            check.validate({"resourceType": rtype})
        # Start-up allocates long-lived objects (definitions, compiled validators);
        # freezing them keeps full GC passes, which pause the event loop, short.
        gc.collect()
        gc.freeze()
        # Requests allocate many short-lived containers (a transaction Bundle tens of
        # thousands); collecting every 700 allocations costs more than it frees.
        gc.set_threshold(10_000, 20, 20)
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await app.state.reindexer.close()
            await search_pool.close()
            await pool.close()

    base = settings.base_path.rstrip("/")
    app = Starlette(
        routes=[
            Route(base, fhir_endpoint, methods=_METHODS),
            Route(base + "/{path:path}", fhir_endpoint, methods=_METHODS),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.authenticate = authenticate_as_system  # who is asking (auth/); SMART replaces it
    return app
