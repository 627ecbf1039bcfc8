"""One webhook request (events/webhook.py): Standard Webhooks headers, channel headers,
and the bounds on what an endpoint can make us do."""

from __future__ import annotations

import asyncio
import socket
import threading
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from headless_ehr.config import WEBHOOK_BLOCKED_NETWORKS, Settings
from headless_ehr.events.webhook import (
    HeaderError,
    WebhookSender,
    _GuardedResolver,
    check_secret,
    networks,
    parse_header,
    signature_headers,
)

from .webhook_receiver import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
async def sender():
    s = WebhookSender(timeout_seconds=1.0)
    yield s
    await s.close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def test_the_signature_is_v1_base64_hmac_sha256_of_id_timestamp_body_and_verifies():
    body = b'{"resourceType":"Bundle"}'
    headers = signature_headers("msg-1", body, SECRET)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers) == {"resourceType": "Bundle"}


def test_the_signature_covers_the_id_the_timestamp_and_the_body():
    body = b"{}"
    at = datetime.now(UTC)
    signed = signature_headers("msg-1", body, SECRET, at)
    for changed in ({"webhook-id": "msg-2"}, {"webhook-timestamp": str(int(at.timestamp()) - 1)}):
        with pytest.raises(Exception, match="signature"):
            Webhook(SECRET).verify(body, {**signed, **changed})
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(b'{"a":1}', signed)


def test_without_a_secret_there_is_no_signature():
    assert set(signature_headers("msg-1", b"", None)) == {"webhook-id", "webhook-timestamp"}


@pytest.mark.parametrize("secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_!!!notbase64"])
def test_a_secret_must_be_whsec_and_a_base64_key(secret: str):
    with pytest.raises(ValueError, match="whsec_"):
        check_secret(secret)


def test_a_good_secret_passes():
    check_secret(SECRET)


def test_a_channel_header_line_is_name_colon_value():
    assert parse_header("Authorization:  Bearer abc ") == ("Authorization", "Bearer abc")


@pytest.mark.parametrize(
    "line",
    [
        "no colon here",
        ": empty name",
        "Bad Name: x",
        "X-Split: a\r\nInjected: b",
        "webhook-signature: v1,forged",
        "Webhook-Id: forged",
        "Content-Type: text/plain",
        "Host: elsewhere.example",
        "Content-Length: 0",
    ],
)
def test_malformed_or_reserved_channel_headers_are_refused(line: str):
    with pytest.raises(HeaderError):
        parse_header(line)


async def test_a_redirect_is_not_followed_and_counts_as_a_failure(sender: WebhookSender, receiver: Receiver):
    receiver.answer = lambda _r: 307
    attempt = await sender.send("POST", receiver.url, b"{}", "m1")
    assert (attempt.status, attempt.ok) == (307, False)
    assert len(receiver.received()) == 1


async def test_a_refused_connection_is_an_attempt_with_no_status(sender: WebhookSender):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens
    attempt = await sender.send("POST", f"http://127.0.0.1:{port}/hook", b"{}", "m1")
    assert attempt.status is None and not attempt.ok
    assert "Connect" in (attempt.error or "")


async def test_an_endpoint_that_does_not_answer_in_time_is_a_timeout(sender: WebhookSender, receiver: Receiver):
    receiver.delay = 3.0
    started = asyncio.get_running_loop().time()
    attempt = await sender.send("POST", receiver.url, b"{}", "m1")
    assert attempt.status is None and not attempt.ok
    assert asyncio.get_running_loop().time() - started < 2.5  # bounded by the timeout (1 s here)


async def test_an_endless_answer_is_not_read_beyond_a_small_bound(sender: WebhookSender):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    stop = threading.Event()

    def endless() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        try:
            while not stop.is_set():
                conn.sendall(chunk)
        except OSError:
            pass
        finally:
            conn.close()

    thread = threading.Thread(target=endless, daemon=True)
    thread.start()
    try:
        attempt = await sender.send("POST", f"http://127.0.0.1:{port}/hook", b"{}", "m1")
    finally:
        stop.set()
        server.close()
    assert attempt.ok and attempt.status == 200
    assert attempt.latency_ms < 900  # did not wait for the answer to end


async def test_the_id_timestamp_signature_and_channel_headers_reach_the_endpoint(
    sender: WebhookSender, receiver: Receiver
):
    body = b'{"resourceType":"Bundle"}'
    attempt = await sender.send("POST", receiver.url, body, "evt-1", secret=SECRET, channel_headers=["X-Key: k1"])
    assert attempt.ok
    (got,) = receiver.received()
    assert got.headers["webhook-id"] == "evt-1"
    assert got.headers["x-key"] == "k1"
    assert Webhook(SECRET).verify(got.body, got.headers)["resourceType"] == "Bundle"


# -- where a webhook may go (EHR_WEBHOOK_BLOCKED_NETWORKS) ----------------------------------------


@pytest.fixture
async def guarded():
    s = WebhookSender(timeout_seconds=1.0, blocked_networks=WEBHOOK_BLOCKED_NETWORKS)
    yield s
    await s.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "localhost", "169.254.169.254", "[::1]"])
async def test_no_webhook_goes_to_a_blocked_network(guarded, receiver, host: str):
    url = receiver.url.replace("127.0.0.1", host)
    attempt = await guarded.send("POST", url, b"{}", "m1")
    assert attempt.permanent and not attempt.ok and "EHR_WEBHOOK_BLOCKED_NETWORKS" in (attempt.error or "")
    assert receiver.received() == []


async def test_a_name_that_resolves_to_a_blocked_network_only_is_refused_after_dns():
    """What the connection would be made to counts, not the name: DNS rebinding cannot get round it."""
    resolver = _GuardedResolver(networks(["127.0.0.0/8", "::1/128"]))
    try:
        with pytest.raises(OSError, match="EHR_WEBHOOK_BLOCKED_NETWORKS"):
            await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
    finally:
        await resolver.close()


async def test_an_empty_block_list_lets_webhooks_reach_loopback(sender, receiver):
    assert (await sender.send("POST", receiver.url, b"{}", "m1")).ok


def test_a_malformed_blocked_network_stops_start_up(monkeypatch):
    monkeypatch.setenv("EHR_WEBHOOK_BLOCKED_NETWORKS", "10.0.0.0/8,not-a-network")
    with pytest.raises(ValueError, match="EHR_WEBHOOK_BLOCKED_NETWORKS"):
        Settings.from_env()
