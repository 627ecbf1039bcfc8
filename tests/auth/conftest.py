"""Fixtures of the access tests: two patients' data (tests/auth/world.py), built once per
module that asks for it, and tokens of patient A."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.auth.world import World, build_world
from tests.conftest import bearer, mint_token


@pytest.fixture(scope="module")
async def world(app: Any) -> AsyncIterator[World]:
    transport = httpx.ASGITransport(app=app)
    headers = bearer(mint_token(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver/fhir", headers=headers) as c:
        yield await build_world(c)


@pytest.fixture
async def as_a(client_for: Any, world: World) -> httpx.AsyncClient:
    """Patient A's app: reads and searches A's record."""
    return await client_for("patient/*.rs", patient=world.a.patient)


@pytest.fixture
async def user_a(client_for: Any, world: World) -> httpx.AsyncClient:
    """Patient A signed in as a user (fhirUser), with user-level read scopes."""
    return await client_for("user/*.rs", fhirUser=f"Patient/{world.a.patient}")


@pytest.fixture
async def writer_a(client_for: Any, world: World) -> httpx.AsyncClient:
    """Patient A's app with every right on A's record."""
    return await client_for("patient/*.cruds", patient=world.a.patient)
