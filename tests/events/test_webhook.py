"""One webhook request (events/webhook.py): Standard Webhooks headers, channel headers,
and the bounds on what an endpoint can make us do."""

from __future__ import annotations

import asyncio
import socket
import threading
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from headless_ehr.events.webhook import HeaderError, WebhookSender, check_secret, parse_header, signature_headers

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
