"""Fixtures of the bulk tests: nodes (apps) of a database of the test's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from headless_ehr.app import create_app
from headless_ehr.config import Settings
from tests.conftest import bearer, mint_token


@pytest.fixture
async def node(fresh_database: str, tmp_path: Path) -> AsyncIterator[Any]:
    """node(**settings) -> a client of a new app on this test's own database; all share a data dir."""
    opened: list[tuple[Any, Any, httpx.AsyncClient]] = []

    async def make(**changes: Any) -> httpx.AsyncClient:
        settings = Settings(database_url=fresh_database, data_dir=tmp_path, rate_limit_per_minute=10_000_000, **changes)
        app = create_app(settings)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        transport = httpx.ASGITransport(app=app)
        headers = bearer(mint_token(app))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver/fhir", headers=headers)
        opened.append((app, lifespan, client))
        return client

    yield make
    for _, lifespan, client in reversed(opened):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)
