"""`ehr events tail`: each change as a line, from the JetStream stream or, without NATS, the outbox."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
from typing import IO

import pytest

from tests.e2e.test_serve import free_port

from .nats_support import nats_url, unique_stream

__all__ = ["nats_url"]  # the fixture, used by name


class Tail:
    """`ehr events tail` as a child process, its output read line by line without blocking the loop."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "headless_ehr.cli", "events", "tail", *args],
            env={**base, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=_pump, args=(stream, lines), daemon=True).start()

    async def line(self, lines: queue.Queue[str], wait: float = 30) -> str:
        try:
            return await asyncio.to_thread(lines.get, True, wait)
        except queue.Empty:
            raise AssertionError("ehr events tail printed nothing in time") from None

    async def ready(self) -> str:
        first = await self.line(self.err)
        assert first.startswith("following"), first
        return first

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: its exit code and whatever else it wrote to stderr."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=30)
        rest: list[str] = []
        while not self.err.empty():
            rest.append(self.err.get())
        return code, "".join(rest)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for text in stream:
        lines.put(text)


@pytest.fixture
def tails():
    started: list[Tail] = []

    def start(env: dict[str, str], *args: str) -> Tail:
        started.append(Tail(env, *args))
        return started[-1]

    yield start
    for tail in started:
        tail.kill()


async def test_without_nats_tail_prints_each_outbox_event_of_the_type_until_ctrl_c(tails, settings, client):
    tail = tails({"EHR_DATABASE_URL": settings.database_url}, "--type", "Patient")
    assert "outbox" in await tail.ready()
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert (await client.post("/Observation", json=observation)).status_code == 201
    pid = (await client.post("/Patient", json={"resourceType": "Patient"})).json()["id"]
    line = await tail.line(tail.out)  # the Patient's, not the Observation's
    assert f"Patient/{pid}/_history/1" in line and " create " in line
    code, err = tail.interrupt()
    assert code == 0 and "Traceback" not in err


async def test_with_nats_tail_follows_the_stream_until_ctrl_c(tails, app_with, nats_url):
    async with unique_stream(nats_url) as stream:
        node = await app_with(**stream.settings(nats_url))
        tail = tails(stream.env(nats_url))
        assert stream.name in await tail.ready()
        pid = (await node.post("/Patient", json={"resourceType": "Patient"})).json()["id"]
        assert (await node.delete(f"/Patient/{pid}")).status_code in (200, 204)
        mine: list[str] = []
        while len(mine) < 2:  # the node may first publish what committed before it started
            line = await tail.line(tail.out)
            mine += [line] if f"Patient/{pid}/" in line else []
        assert [line.split()[1] for line in mine] == ["create", "delete"]
        code, err = tail.interrupt()
        assert code == 0 and "Traceback" not in err


@pytest.mark.parametrize("name", ["Patients", "ehr.>"])
def test_tail_refuses_a_type_that_is_not_a_resource_type(name):
    done = subprocess.run(
        [sys.executable, "-m", "headless_ehr.cli", "events", "tail", "--type", name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--type" in done.stderr and "Traceback" not in done.stderr


def test_tail_without_a_reachable_nats_says_so_and_exits_1():
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    env["EHR_NATS_URL"] = f"nats://127.0.0.1:{free_port()}"  # nobody listens there
    done = subprocess.run(
        [sys.executable, "-m", "headless_ehr.cli", "events", "tail"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "no NATS answered" in done.stderr and "Traceback" not in done.stderr
