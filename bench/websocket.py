"""WebSocket channel: latency from a write's response to the ping on sockets bound on the
same node and on another node, and events/s a socket is sent under sustained writes.

Two `ehr serve` nodes on one PostgreSQL database (a scratch database made on --server and
dropped afterwards), tokens on (one system token per node: each node is its own FHIR base).
One R4 websocket Subscription (`Patient?family=<run>`) is bound on a socket at each node.

    python bench/websocket.py                                  # 300 sequential writes, then 10 s at 8 writers
    python bench/websocket.py --writes 1000 --writers 16 --duration 20
    python bench/websocket.py --server postgresql://postgres@127.0.0.1:5432/postgres

Prints a Markdown report; it records nothing (the event benchmarks' figures of record are
the webhook ones, bench/events.py). The load generator shares the machine with both
nodes and PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket as sockets_module
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from websockets.asyncio.client import ClientConnection, connect

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def free_port() -> int:
    with sockets_module.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """An `ehr serve` process on a free loopback port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.env = env
        self.data_dir = tempfile.mkdtemp(prefix="ehr-bench-ws-")
        cmd = [sys.executable, "-m", "headless_ehr.cli", "serve", "--port", str(self.port), "--data-dir", self.data_dir]
        self.proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)

    def ready(self, timeout: float = 120) -> None:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ehr serve exited ({self.proc.returncode})")
            try:
                if httpx.get(f"{self.base}/metadata", timeout=2, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("ehr serve did not answer in time")

    def token(self) -> str:
        argv = [sys.executable, "-m", "headless_ehr.cli", "token", "--url", self.base, "--data-dir", self.data_dir]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"ehr token failed: {done.stderr[-1000:]}")
        return done.stdout.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def bound(node: Node, token: str, sid: str) -> ClientConnection:
    socket = await connect(
        node.base.replace("http://", "ws://") + "/ws",
        additional_headers={"Authorization": f"Bearer {token}"},
        proxy=None,
        max_queue=None,
    )
    await socket.send(f"bind {sid}")
    assert await asyncio.wait_for(socket.recv(), 10) == f"bound {sid}"
    return socket


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(
    client: httpx.AsyncClient, sockets: list[ClientConnection], family: str, writes: int
) -> list[list[float]]:
    """ms from each write's response to its ping on each socket (one write at a time)."""
    delays: list[list[float]] = [[] for _ in sockets]
    for _ in range(writes):
        answer = await client.post(
            "/Patient", json={"resourceType": "Patient", "name": [{"family": family}]}, headers=FHIR_JSON
        )
        assert answer.status_code == 201, answer.text
        sent = time.perf_counter()
        for i, socket in enumerate(sockets):
            await asyncio.wait_for(socket.recv(), 30)
            delays[i].append((time.perf_counter() - sent) * 1000)
    return delays


async def throughput(
    clients: list[httpx.AsyncClient], socket: ClientConnection, family: str, writers: int, seconds: float
) -> tuple[int, int, float, float]:
    """(writes, pings, write seconds, seconds until the last ping) under `writers` concurrent writers."""
    stop = time.perf_counter() + seconds
    written = 0

    async def writer(client: httpx.AsyncClient) -> None:
        nonlocal written
        while time.perf_counter() < stop:
            answer = await client.post(
                "/Patient", json={"resourceType": "Patient", "name": [{"family": family}]}, headers=FHIR_JSON
            )
            written += answer.status_code == 201

    start = time.perf_counter()
    pings, last = 0, start
    tasks = [asyncio.create_task(writer(clients[i % len(clients)])) for i in range(writers)]
    done_writing = asyncio.gather(*tasks)
    while True:
        try:
            await asyncio.wait_for(socket.recv(), 5 if done_writing.done() else 30)
        except TimeoutError:
            break
        pings += 1
        last = time.perf_counter()
        if done_writing.done() and pings >= written:
            break
    await done_writing
    return written, pings, stop - start, last - start


async def run(args: argparse.Namespace) -> str:
    name = f"ehr_bench_ws_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    database = urlunsplit(urlsplit(args.server)._replace(path="/" + name))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    env.update(
        EHR_DATABASE_URL=database,
        EHR_ADMIN_CLIENT_ID="bench-admin",
        EHR_ADMIN_CLIENT_SECRET=secrets.token_urlsafe(32),
        EHR_RATE_LIMIT_PER_MINUTE="1000000000",
        EHR_ACCESS_TOKEN_LIFETIME="3600",
        NO_PROXY="127.0.0.1,localhost",
    )
    log = Path(tempfile.gettempdir()) / "bench-websocket.log"
    nodes: list[Node] = []
    try:
        nodes.append(Node(env, log))
        nodes[0].ready()
        nodes.append(Node(env, log))
        nodes[1].ready()
        tokens = [n.token() for n in nodes]
        clients = [
            httpx.AsyncClient(base_url=n.base, headers={"Authorization": f"Bearer {t}"}, timeout=60, trust_env=False)
            for n, t in zip(nodes, tokens, strict=True)
        ]
        family = uuid.uuid4().hex
        subscription = {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "bench",
            "criteria": f"Patient?family={family}",
            "channel": {"type": "websocket"},
        }
        created = await clients[0].post("/Subscription", json=subscription, headers=FHIR_JSON)
        sid = created.json()["id"]
        sockets = [await bound(n, t, sid) for n, t in zip(nodes, tokens, strict=True)]
        await latency(clients[0], sockets, family, 20)  # warm-up
        same, other = await latency(clients[0], sockets, family, args.writes)
        await sockets[0].close()
        written, pings, write_s, deliver_s = await throughput(clients, sockets[1], family, args.writers, args.duration)
        for c in clients:
            await c.aclose()
        await sockets[1].close()
    finally:
        for n in nodes:
            n.stop()
        admin = await asyncpg.connect(args.server)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    def row(label: str, values: list[float]) -> str:
        return f"| {label} | {statistics.median(values):.1f} | {percentile(values, 0.99):.1f} | {max(values):.1f} |"

    verdict = "every write pinged once" if pings == written else "MISMATCH: writes and pings differ"
    return "\n".join(
        [
            f"### WebSocket channel, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
            f"Two nodes, one PostgreSQL; {args.writes} sequential writes on node A (after 20 warm-up ones).",
            "",
            "| socket | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|",
            row("on node A (the writer's)", same),
            row("on node B", other),
            "",
            f"Sustained: {args.writers} writers on both nodes for {args.duration:.0f} s: {written} writes"
            f" ({written / write_s:.0f}/s), {pings} pings on node B's socket"
            f" ({pings / deliver_s:.0f}/s until the last); {verdict}.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--server",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL to make the scratch database on",
    )
    parser.add_argument("--writes", type=int, default=300, help="sequential writes timed (default 300)")
    parser.add_argument("--writers", type=int, default=8, help="concurrent writers of the sustained run (default 8)")
    parser.add_argument("--duration", type=float, default=10, help="seconds of the sustained run (default 10)")
    print(asyncio.run(run(parser.parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
