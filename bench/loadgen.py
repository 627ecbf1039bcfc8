"""A low-overhead HTTP/1.1 load generator on raw asyncio streams, used when wrk is absent.

Closed loop like wrk: each client holds one keep-alive connection and sends its next
request as soon as the previous answer has been read, timing every exchange.

    python bench/loadgen.py --port P --case read --clients 8 --duration 10 \
        --body update.json --ids ids.txt [--token ACCESS_TOKEN]

prints one JSON line (a LoadResult). `drive` is reused by the PostgreSQL floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class LoadResult:
    """What one closed-loop run measured; errors counts every non-2xx and every failure."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_kinds: dict[str, int] = field(default_factory=dict)
    cpu_s: float | None = None  # CPU time the load generator itself used

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @classmethod
    def from_latencies(cls, lat_ns: list[int], seconds: float, kinds: Counter[str]) -> LoadResult:
        lat_ns.sort()

        def pct(q: float) -> float:
            if not lat_ns:
                return math.nan
            return lat_ns[min(len(lat_ns) - 1, max(0, math.ceil(q * len(lat_ns)) - 1))] / 1e6

        return cls(len(lat_ns), seconds, pct(0.50), pct(0.99), sum(kinds.values()), dict(kinds))


async def drive(
    clients: int,
    duration: float,
    connect: Callable[[], Awaitable[Any]],
    op: Callable[[Any], Awaitable[str | None]],
    close: Callable[[Any], Awaitable[None]],
    grace: float = 10.0,
) -> LoadResult:
    """Run `clients` closed loops of op(conn) for `duration` seconds.

    op returns None on success or an error kind (e.g. the HTTP status); an exception is
    counted under its type name and the connection is replaced. Connections are opened
    before the clock starts; requests still unanswered `grace` s after the end are
    counted as "timeout".
    """
    conns = [await connect() for _ in range(clients)]
    lat: list[int] = []
    kinds: Counter[str] = Counter()
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + duration

    async def client(conn: Any) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter_ns()
            try:
                if conn is None:
                    conn = await connect()
                bad = await op(conn)
            except Exception as exc:  # every failure is counted, none hidden
                kinds[type(exc).__name__] += 1
                if conn is not None:
                    await close(conn)
                conn = None
                await asyncio.sleep(0.001)
                continue
            lat.append(time.perf_counter_ns() - t0)
            if bad is not None:
                kinds[bad] += 1
        if conn is not None:
            await close(conn)

    tasks = [asyncio.create_task(client(c)) for c in conns]
    _, pending = await asyncio.wait(tasks, timeout=duration + grace)
    for task in pending:
        task.cancel()
        kinds["timeout"] += 1
    result = LoadResult.from_latencies(lat, time.perf_counter() - start, kinds)
    result.cpu_s = time.process_time() - cpu0
    return result


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        parts.append(await reader.readexactly(size + 2))
        if size == 0:
            return b"".join(parts)


async def exchange(streams: Streams, request: bytes) -> tuple[int, bytes, bool]:
    """Send one request; return (status, body, keep-alive)."""
    reader, writer = streams
    writer.write(request)
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head[9:12])
    if b"transfer-encoding: chunked" in head:
        body = await _read_chunked(reader)
    else:
        at = head.find(b"content-length:")
        size = int(head[at + 15 : head.index(b"\r\n", at)]) if at >= 0 else 0
        body = await reader.readexactly(size) if size else b""
    return status, body, b"connection: close" not in head


def http_request(
    method: str, path: str, body: bytes | None = None, host: str = "127.0.0.1", token: str | None = None
) -> bytes:
    """A keep-alive FHIR JSON request, the same headers wrk's script sends.

    host is the Host header, with the port: a token's audience is the FHIR base the
    request names, so it must be the URL the token was asked for."""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        "Accept: application/fhir+json",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines += ["Content-Type: application/fhir+json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def case_requests(
    case: str, prefix: str, body: bytes, ids: list[str], host: str = "127.0.0.1", token: str | None = None
) -> list[bytes]:
    """Every request a case may send (one for create, one per id otherwise)."""
    if case == "create":
        return [http_request("POST", f"{prefix}/Patient", body, host, token)]
    if case == "read":
        return [http_request("GET", f"{prefix}/Patient/{i}", None, host, token) for i in ids]
    if case == "update":
        return [
            http_request("PUT", f"{prefix}/Patient/{i}", body.replace(b"__ID__", i.encode()), host, token) for i in ids
        ]
    raise ValueError(f"unknown case {case!r}")


async def http_load(host: str, port: int, requests: list[bytes], clients: int, duration: float) -> LoadResult:
    async def connect() -> list[Any]:
        return list(await asyncio.open_connection(host, port))

    async def op(conn: list[Any]) -> str | None:
        status, _, keep = await exchange((conn[0], conn[1]), random.choice(requests))
        if not keep:  # the server may end a keep-alive connection; that is no error
            conn[1].close()
            conn[:] = await connect()
        return None if 200 <= status < 300 else str(status)

    async def close(conn: list[Any]) -> None:
        conn[1].close()

    return await drive(clients, duration, connect, op, close)


async def seed(host: str, port: int, request: bytes, n: int, clients: int = 8) -> list[str]:
    """Create n resources with `request` and return their ids; any failure aborts."""
    ids: list[str] = []

    async def worker(count: int) -> None:
        streams = await asyncio.open_connection(host, port)
        try:
            for _ in range(count):
                status, body, _ = await exchange(streams, request)
                if status != 201:
                    raise RuntimeError(f"seeding: create answered {status}: {body[:300]!r}")
                ids.append(json.loads(body)["id"])
        finally:
            streams[1].close()

    await asyncio.gather(*(worker(n // clients + (i < n % clients)) for i in range(clients)))
    return ids


def run(coro: Awaitable[Any]) -> Any:
    """asyncio.run on uvloop when it is installed (it is, through uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--case", choices=["create", "read", "update"], required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--prefix", default="/fhir")
    p.add_argument("--body", type=Path, required=True, help="create body, or update template")
    p.add_argument("--ids", type=Path, help="ids for read/update, one a line")
    p.add_argument("--token", help="access token sent as `Authorization: Bearer` (none: no header)")
    args = p.parse_args(argv)
    ids = args.ids.read_text().split() if args.ids else []
    host = f"{args.host}:{args.port}"
    requests = case_requests(args.case, args.prefix, args.body.read_bytes(), ids, host, args.token)
    result = run(http_load(args.host, args.port, requests, args.clients, args.duration))
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
