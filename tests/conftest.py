"""Shared fixtures: a real PostgreSQL database and the real ASGI app.

With EHR_TEST_DATABASE_URL set (CI sets it to the machine's server) each test run
creates its own database there and drops it afterwards; otherwise an embedded
PostgreSQL is started in a temporary folder. No database is ever mocked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from headless_ehr.app import create_app
from headless_ehr.auth.tokens import issuer_of
from headless_ehr.config import Settings

SHARED_FHIR = Path(__file__).resolve().parents[1].parent / "shared" / "fhir"
# .ci/run sets this: there the corpus suites must run, so a missing data set fails the run.
REQUIRE_SHARED = os.environ.get("EHR_REQUIRE_SHARED_FHIR") == "1"


def pytest_sessionstart(session: pytest.Session) -> None:
    if REQUIRE_SHARED and not SHARED_FHIR.is_dir():
        pytest.exit(f"EHR_REQUIRE_SHARED_FHIR=1 but the shared FHIR data set is absent ({SHARED_FHIR})", returncode=1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Where the data set is required, a test skipped for want of part of it fails."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_SHARED and report.skipped and str(SHARED_FHIR) in str(report.longrepr):
        report.outcome = "failed"


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A DSN of a PostgreSQL server the tests may create databases on."""
    url = os.environ.get("EHR_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from headless_ehr.db.embedded import EmbeddedPostgres

    folder = Path(tempfile.mkdtemp(prefix="ehr-test-"))
    embedded = EmbeddedPostgres(folder)
    try:
        yield embedded.start()
    finally:
        embedded.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def scratch_database(server_dsn: str, prefix: str) -> AsyncIterator[str]:
    """A new empty database on the server, dropped again afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(server_dsn, name)
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def database_url(server_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database for this test run."""
    async with scratch_database(server_dsn, "ehr_test") as url:
        yield url


@pytest.fixture
async def fresh_database(server_dsn: str) -> AsyncIterator[str]:
    """An empty database of one test's own, for tests whose data must not meet the others'."""
    async with scratch_database(server_dsn, "ehr_own") as url:
        yield url


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # the data dir receives admin-client.json on first start: never the working directory;
    # the rate limiter runs on every request of the suite, at a limit the suite never reaches
    data_dir = tmp_path_factory.mktemp("ehr-data")
    # webhooks of the tests go to receivers on loopback, which the default block list refuses
    return Settings(
        database_url=database_url,
        max_body_bytes=1024 * 1024,
        data_dir=data_dir,
        rate_limit_per_minute=10_000_000,
        webhook_blocked_networks=(),
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[object]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def mint_token(app: Any, scope: str = "system/*.*", *, base_url: str = "http://testserver/fhir", **claims: Any) -> str:
    """An access token of the app's own signing keys, as its token endpoint would issue
    (claims: patient, encounter, fhirUser, roles, subject, client_id, lifetime)."""
    issuer = issuer_of(base_url, app.state.settings.base_path)
    subject = claims.pop("subject", "test-client")
    client_id = claims.pop("client_id", "test-client")
    issued = app.state.tokens.issue(
        issuer=issuer, audience=base_url, subject=subject, client_id=client_id, scope=scope, **claims
    )
    return issued.access_token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the shared app holding a system token (SMART `system/*.*`)."""
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    headers = bearer(mint_token(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver/fhir", headers=headers) as c:
        yield c


@pytest.fixture
async def anonymous(app: object) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the shared app without a token."""
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver/fhir") as c:
        yield c


@pytest.fixture
async def client_for(app: object) -> AsyncIterator[Any]:
    """A factory of clients of the shared app holding tokens of the given scope and context:
    `await client_for("patient/*.rs", patient="123")`."""
    opened: list[httpx.AsyncClient] = []

    async def make(scope: str, **claims: Any) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        headers = bearer(mint_token(app, scope, **claims))
        c = httpx.AsyncClient(transport=transport, base_url="http://testserver/fhir", headers=headers)
        opened.append(c)
        return c

    yield make
    for c in opened:
        await c.aclose()


@pytest.fixture
async def app_with(settings: Settings, app: object) -> AsyncIterator[Any]:
    """A factory of clients of second apps on the same database with changed settings
    (made after the shared app has migrated it); `base_url` names the host they are reached on."""
    opened = []

    async def make(base_url: str = "http://testserver/fhir", **changes: object) -> httpx.AsyncClient:
        application = create_app(dataclasses.replace(settings, **changes))
        lifespan = application.router.lifespan_context(application)
        await lifespan.__aenter__()
        audience = str(changes.get("public_base_url") or base_url).rstrip("/")
        headers = bearer(mint_token(application, base_url=audience))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url=base_url, headers=headers)
        opened.append((lifespan, client))
        return client

    yield make
    for lifespan, client in reversed(opened):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def db(app: object) -> asyncpg.Pool:
    return app.state.pool  # type: ignore[attr-defined]


@pytest.fixture
def shared_fhir() -> Path:
    if not SHARED_FHIR.is_dir():
        pytest.skip(f"the shared FHIR data set is absent ({SHARED_FHIR})")
    return SHARED_FHIR
