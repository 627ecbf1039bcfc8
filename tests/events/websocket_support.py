"""The shared app served by a real uvicorn on loopback (in the tests' own event loop), so
WebSocket clients (the `websockets` library) and HTTP clients reach it as they would a
deployment; and subscriptions with notifications put in place as the relay leaves them.

Tokens are minted for this server's own FHIR base (its audience). Subscriptions are
created over HTTP (the relay's write hook keeps their state and owner), then set active
with the options a test asks for; `notify()` adds a numbered
notification and NOTIFYs `ehr_events` in one transaction, as the relay does at commit.
Criteria in these tests match nothing any test writes, so a relay running too never
numbers their events.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from ..conftest import bearer, mint_token
from .conftest import add_notifications

FHIR_JSON = "application/fhir+json"
NEVER = "Observation?code=urn:test:never|none"  # criteria no test's write matches


@dataclass
class LiveServer:
    app: Any
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/fhir/ws"

    def token(self, scope: str = "system/*.*", **claims: Any) -> str:
        return mint_token(self.app, scope, base_url=self.base, **claims)

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = bearer(token or self.token())
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=30, trust_env=False)

    def socket(self, token: str | None = None, path: str = "/fhir/ws") -> Any:
        """A WebSocket connection (an async context manager); with the token as a bearer token."""
        headers = bearer(token) if token else None
        url = f"ws://127.0.0.1:{self.port}{path}"
        return connect(url, additional_headers=headers, proxy=None, open_timeout=10)


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[LiveServer]:
    """app (already started) served on a free loopback port until the block ends."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveServer(app, port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@pytest.fixture(scope="session")
async def live(app: Any) -> AsyncIterator[LiveServer]:
    async with serving(app) as server:
        await asyncio.wait_for(app.state.websockets.hub.connected.wait(), 10)
        yield server


async def create_subscription(
    client: httpx.AsyncClient,
    db: asyncpg.Pool,
    *,
    channel: str = "websocket",
    payload: str = "empty",
    heartbeat: int | None = None,
    topic: str | None = None,
) -> str:
    """A Subscription and its notification state, active; its owner is the client's token
    (a patient's token makes a subscription of that patient's, tagged by the server)."""
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "websocket tests",
        "criteria": NEVER,
        "channel": {"type": channel},
    }
    if channel == "rest-hook":
        resource["channel"]["endpoint"] = "http://127.0.0.1:9/hook"
    created = await client.post("/Subscription", json=resource, headers={"Content-Type": FHIR_JSON})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    # the state as the relay keeps it (made here when no relay runs), active, with these options
    await db.execute(
        "INSERT INTO subscription_state (id, owner, status, triggers, channel, payload, r4_style)"
        """ VALUES ($1, '{"system": true}', 'active', '[]', $2, 'empty', true) ON CONFLICT (id) DO NOTHING""",
        sid,
        channel,
    )
    await db.execute(
        "UPDATE subscription_state SET status = 'active', topic = $2, payload = $3, r4_style = $4,"
        " heartbeat_seconds = $5 WHERE id = $1",
        sid,
        topic,
        payload,
        topic is None,
        heartbeat,
    )
    return sid


async def notify(
    db: asyncpg.Pool, sid: str, resource_type: str, rid: str, version: int = 1, interaction: str = "create"
) -> int:
    """A notification of the subscription for that change, numbered next, as the relay commits it."""
    event = (uuid.uuid4(), 0, resource_type, rid, version, interaction, datetime.now(UTC))
    (number,) = await add_notifications(db, sid, [event])
    return number


async def post(client: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    created = await client.post(f"/{resource['resourceType']}", json=resource, headers={"Content-Type": FHIR_JSON})
    assert created.status_code == 201, created.text
    return created.json()["id"]


async def receive(socket: ClientConnection, within: float = 5) -> str:
    message = await asyncio.wait_for(socket.recv(), within)
    assert isinstance(message, str)
    return message


async def silent(socket: ClientConnection, seconds: float = 0.5) -> bool:
    """Whether nothing arrives within seconds."""
    try:
        message = await asyncio.wait_for(socket.recv(), seconds)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected message: {str(message)[:300]}")
