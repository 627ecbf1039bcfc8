"""Rate limits: EHR_RATE_LIMIT_PER_MINUTE per client and per source address; over either, 429 with Retry-After."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import bearer, mint_token

# .ci/run sets this: there Redis runs on 127.0.0.1:6379 and its tests must run, not skip.
REQUIRE_REDIS = os.environ.get("EHR_REQUIRE_REDIS") == "1"
REDIS_URL = os.environ.get("EHR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_reachable() -> bool:
    where = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((where.hostname or "127.0.0.1", where.port or 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_url() -> str:
    if not _redis_reachable():
        if REQUIRE_REDIS:
            pytest.fail(f"EHR_REQUIRE_REDIS=1 but no Redis answers at {REDIS_URL}")
        pytest.skip(f"no Redis at {REDIS_URL} (EHR_TEST_REDIS_URL; CI has one and these tests run there)")
    return REDIS_URL


def _prefix() -> str:
    return f"ehr-test-{uuid.uuid4().hex[:12]}"  # each test its own counters in the shared Redis


def _from(address: str) -> dict[str, str]:
    """A request a trusted proxy (httpx's ASGI transport connects from 127.0.0.1) forwarded for address."""
    return {"X-Forwarded-For": address}


def _app(client: httpx.AsyncClient) -> Any:
    return client._transport.app  # type: ignore[attr-defined]


def _is_throttled(response: httpx.Response) -> bool:
    if response.status_code != 429:
        return False
    assert int(response.headers["Retry-After"]) >= 1
    return True


async def test_a_client_over_the_limit_gets_429_with_retry_after_and_an_operation_outcome(app_with):
    client = await app_with(rate_limit_per_minute=3)
    for _ in range(3):
        assert (await client.get("/Patient?_count=1")).status_code == 200
    response = await client.get("/Patient?_count=1")
    assert _is_throttled(response)
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "throttled"


async def test_one_client_is_limited_across_addresses(app_with):
    client = await app_with(rate_limit_per_minute=3)
    for i in range(3):
        assert (await client.get("/Patient?_count=1", headers=_from(f"10.1.0.{i}"))).status_code == 200
    assert _is_throttled(await client.get("/Patient?_count=1", headers=_from("10.1.0.99")))


async def test_one_address_is_limited_across_clients(app_with):
    client = await app_with(rate_limit_per_minute=3)
    app = _app(client)
    for i in range(3):
        token = mint_token(app, client_id=f"client-{i}")
        response = await client.get("/Patient?_count=1", headers={**bearer(token), **_from("10.2.0.1")})
        assert response.status_code == 200
    other = mint_token(app, client_id="client-other")
    assert _is_throttled(await client.get("/Patient?_count=1", headers={**bearer(other), **_from("10.2.0.1")}))


async def test_other_addresses_and_clients_are_not_held_back_by_one_over_its_limit(app_with):
    client = await app_with(rate_limit_per_minute=2)
    for _ in range(3):
        await client.get("/metadata", headers=_from("10.3.0.1"))
    assert _is_throttled(await client.get("/metadata", headers=_from("10.3.0.1")))
    assert (await client.get("/metadata", headers=_from("10.3.0.2"))).status_code == 200


async def test_anonymous_requests_count_under_their_address_only(app_with):
    client = await app_with(rate_limit_per_minute=2)
    transport = httpx.ASGITransport(app=_app(client))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver/fhir") as anonymous:
        for _ in range(2):  # two tokenless requests from each of three addresses: six in all, none refused
            for a in range(3):
                assert (await anonymous.get("/Patient", headers=_from(f"10.4.0.{a}"))).status_code == 401
        assert _is_throttled(await anonymous.get("/Patient", headers=_from("10.4.0.0")))


async def test_forwarded_addresses_from_an_untrusted_peer_are_not_believed(app_with):
    client = await app_with(rate_limit_per_minute=2, trusted_proxies=())
    for i in range(2):
        await client.get("/metadata", headers=_from(f"10.5.0.{i}"))
    # a new X-Forwarded-For does not make a new address: the peer is counted
    assert _is_throttled(await client.get("/metadata", headers=_from("10.5.0.99")))


async def test_the_admin_api_is_limited_with_an_operation_outcome(app_with):
    client = await app_with(base_url="http://testserver", rate_limit_per_minute=1)
    await client.get("/admin/clients", headers=_from("10.6.0.1"))
    response = await client.get("/admin/clients", headers=_from("10.6.0.1"))
    assert _is_throttled(response)
    assert response.json()["issue"][0]["code"] == "throttled"


async def test_the_oauth_endpoints_are_limited_with_an_oauth_error(app_with):
    client = await app_with(base_url="http://testserver", rate_limit_per_minute=1)
    await client.post("/oauth/token", headers=_from("10.7.0.1"))
    response = await client.post("/oauth/token", headers=_from("10.7.0.1"))
    assert _is_throttled(response)
    assert response.json()["error"] == "temporarily_unavailable"


async def test_paths_outside_fhir_oauth_and_admin_are_not_counted(app_with):
    client = await app_with(base_url="http://testserver", rate_limit_per_minute=1)
    for _ in range(3):
        assert (await client.get("/elsewhere", headers=_from("10.8.0.1"))).status_code == 404


async def test_a_limit_of_zero_turns_rate_limits_off(app_with):
    client = await app_with(rate_limit_per_minute=0)
    for _ in range(20):
        assert (await client.get("/metadata?_summary=true")).status_code == 200


async def test_counters_in_redis_limit_a_client(app_with, redis_url):
    client = await app_with(rate_limit_per_minute=3, redis_url=redis_url, redis_key_prefix=_prefix())
    for _ in range(3):
        assert (await client.get("/Patient?_count=1")).status_code == 200
    assert _is_throttled(await client.get("/Patient?_count=1"))


async def test_counters_in_redis_are_shared_by_every_node(app_with, redis_url):
    prefix = _prefix()
    first = await app_with(rate_limit_per_minute=4, redis_url=redis_url, redis_key_prefix=prefix)
    second = await app_with(rate_limit_per_minute=4, redis_url=redis_url, redis_key_prefix=prefix)
    for node in (first, second, first, second):
        assert (await node.get("/metadata", headers=_from("10.9.0.1"))).status_code == 200
    assert _is_throttled(await second.get("/metadata", headers=_from("10.9.0.1")))
    assert _is_throttled(await first.get("/metadata", headers=_from("10.9.0.1")))


async def test_an_unreachable_redis_lets_requests_through_with_a_warning(app_with, caplog):
    # nothing listens on port 1: the limiter fails open rather than taking the API down
    client = await app_with(rate_limit_per_minute=1, redis_url="redis://127.0.0.1:1/0", redis_key_prefix=_prefix())
    with caplog.at_level(logging.WARNING, logger="headless_ehr.auth"):
        for _ in range(3):
            assert (await client.get("/Patient?_count=1")).status_code == 200
    assert any("Redis" in record.getMessage() for record in caplog.records)
