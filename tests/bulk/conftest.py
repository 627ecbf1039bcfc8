"""Fixtures of the bulk tests: nodes (apps) of a database of the test's own."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator
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


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An S3 server with an empty bucket of the test's own (s3.bucket); boto3 in this process pointed at it."""
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
    }.items():
        monkeypatch.setenv(name, value)
    from botocore.config import Config

    client = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
    client.bucket = f"ehr-exports-{uuid.uuid4().hex[:12]}"  # moto's buckets outlive its server in this process
    client.create_bucket(Bucket=client.bucket)
    try:
        yield client
    finally:
        server.stop()
