"""NATS for the broker tests: the machine's server (EHR_TEST_NATS_URL), a private one
that a test can stop and start, unique streams, and a durable consumer's view."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
import orjson
import pytest

from tests.e2e.test_serve import free_port

NATS_URL = os.environ.get("EHR_TEST_NATS_URL", "nats://127.0.0.1:4222")
# .ci/run sets it: there the NATS tests must run, not skip.
REQUIRE_NATS = os.environ.get("EHR_REQUIRE_NATS") == "1"
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def _reachable(url: str) -> bool:
    where = urlsplit(url)
    try:
        with socket.create_connection((where.hostname or "127.0.0.1", where.port or 4222), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def nats_url() -> str:
    if not _reachable(NATS_URL):
        if REQUIRE_NATS:
            pytest.fail(f"EHR_REQUIRE_NATS=1 but no NATS answers at {NATS_URL}")
        pytest.skip(f"no NATS at {NATS_URL} (EHR_TEST_NATS_URL; CI has one and these tests run there)")
    return NATS_URL


@dataclass(frozen=True)
class Stream:
    """A stream and subject prefix of one test's own, so runs never collide."""

    name: str
    prefix: str

    @classmethod
    def unique(cls) -> Stream:
        tag = uuid.uuid4().hex[:12]
        return cls(f"EHRTEST_{tag}", f"ehrtest{tag}")

    def settings(self, url: str) -> dict[str, str]:
        return {"nats_url": url, "nats_stream": self.name, "nats_subject_prefix": self.prefix}

    def env(self, url: str) -> dict[str, str]:
        return {"EHR_NATS_URL": url, "EHR_NATS_STREAM": self.name, "EHR_NATS_SUBJECT_PREFIX": self.prefix}


async def delete_stream(url: str, name: str) -> None:
    with contextlib.suppress(Exception):
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            await nc.jetstream().delete_stream(name)
        finally:
            await nc.close()


@contextlib.asynccontextmanager
async def unique_stream(url: str) -> AsyncIterator[Stream]:
    stream = Stream.unique()
    try:
        yield stream
    finally:
        await delete_stream(url, stream.name)


@dataclass(frozen=True)
class Received:
    msg_id: str
    subject: str
    body: dict


class DurableConsumer:
    """A downstream service's durable pull consumer: what it has received, in order."""

    def __init__(self, url: str, stream: Stream, name: str = "billing") -> None:
        self.url, self.stream, self.name = url, stream, name
        self.received: list[Received] = []

    async def fetch_until(self, done: Callable[[list[Received]], bool], within: float = 30) -> list[Received]:
        """Fetch (and ack) until done(received) holds or `within` seconds pass, then once more:
        a late copy would show."""
        nc = await nats.connect(self.url, connect_timeout=2)
        try:
            deadline = time.monotonic() + within
            while True:  # the server creates the stream once it reaches NATS
                try:
                    sub = await nc.jetstream().pull_subscribe(
                        f"{self.stream.prefix}.>", durable=self.name, stream=self.stream.name
                    )
                    break
                except nats.js.errors.NotFoundError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            while not done(self.received) and time.monotonic() < deadline:
                await self._fetch(sub, 0.5)
            await self._fetch(sub, 1.0)
            return self.received
        finally:
            await nc.close()

    async def _fetch(self, sub, wait: float) -> None:
        try:
            msgs = await sub.fetch(100, timeout=wait)
        except TimeoutError:  # nats-py raises its own subclasses, or the builtin one
            return
        for msg in msgs:
            headers = msg.headers or {}
            self.received.append(Received(headers.get("Nats-Msg-Id", ""), msg.subject, orjson.loads(msg.data)))
            await msg.ack()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 30, step: float = 0.1) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(step)
    return await check()


class PrivateNats:
    """A nats-server with JetStream of one test's own, on a free port, that the test can
    stop and start again (its stream store survives restarts)."""

    def __init__(self) -> None:
        if not os.path.exists(NATS_SERVER):
            pytest.skip("no nats-server binary on this machine")
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="ehr-nats-")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self._dir.name]
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _reachable(self.url):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise AssertionError("the private nats-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()
