"""Webhook notifications of a real `ehr serve`: latency, delivered events/s, and what one
active subscription costs the writes.

    python bench/events.py [--duration 10] [--clients 8] [--rounds 2] [--warmup 3] [--latency-events 300]
                           [--burst 5000] [--database-url URL] [--no-results]

Starts `ehr serve` (embedded PostgreSQL unless --database-url, 1 worker, auth on, audit
on: as deployed) and a webhook receiver in this process (raw asyncio HTTP/1.1, answers
200 at once and notes when each notification arrived). An R4 rest-hook Subscription
(`Patient?family=...`, full-resource: each event is a PUT of the Patient, read as the
owner at delivery time) is what "one active subscription" means. Then:

- latency: one create at a time, the next 20 ms after the last was delivered; the time
  from the create's 201 (its commit) to the receiver having the PUT of that Patient;
- writes: closed-loop creates at --clients for --duration, with no subscription and with
  one matching every create, alternated --rounds times (drift cancels in the means),
  after --warmup seconds of creates that are not measured;
  delivered/s in the run with one is the events delivered from the first write until
  the backlog is drained, divided by that time;
- burst: --burst Patients written in transaction Bundles of 500 as fast as the server
  takes them, then the delivery rate of that backlog (first write sent to last receipt).

Records the report in bench/RESULTS.md (section Events) unless --no-results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import crud
import loadgen
import results
from crud import PATIENT, PREFIX, Served, access_token, bench_admin_client, free_port, machine, snapshot_code

TARGET_P50_MS = 50.0
TARGET_DELIVERED = 1000.0  # events/s
TARGET_WRITE_SHARE = 0.90  # writes with one subscription / writes with none
GENERATOR = crud.Generator("auto")  # wrk when installed (its own process), else bench/loadgen.py here


# -- the receiver --------------------------------------------------------------------------------


@dataclass
class Receipts:
    """What the receiver got: the Patient id of each PUT, when (perf_counter), and each webhook-id."""

    at: dict[str, float] = field(default_factory=dict)  # first receipt per Patient id
    count: int = 0
    ids: set[str] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    last: float = 0.0


class Hook(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive server: every request with a Content-Length body is answered 200."""

    def __init__(self, receipts: Receipts) -> None:
        self.receipts = receipts
        self.buffer = b""
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            size = int(headers.get("content-length") or 0)
            if len(self.buffer) < end + 4 + size:
                return
            self.buffer = self.buffer[end + 4 + size :]
            now = time.perf_counter()
            path = lines[0].split(" ")[1]
            rid = path.rsplit("/", 1)[-1]
            r = self.receipts
            r.at.setdefault(rid, now)
            r.count += 1
            r.ids.add(headers.get("webhook-id", ""))
            r.last = now
            r.arrived.set()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # type: ignore[union-attr]


# -- the server ---------------------------------------------------------------------------------


class Node:
    """One `ehr serve` and the requests the bench sends it."""

    def __init__(self, served: Served, env: dict[str, str], data_dir: Path | None, root: Path) -> None:
        self.served = served
        self.root = root  # request bodies for the generator
        self.port = served.port
        self.host = f"127.0.0.1:{self.port}"
        self.token = access_token(env, self.port, data_dir)

    async def call(self, method: str, path: str, body: object | None = None) -> tuple[int, dict]:
        raw = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        request = loadgen.http_request(method, f"{PREFIX}{path}", raw, self.host, self.token)
        streams = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            status, answer, _ = await loadgen.exchange(streams, request)
        finally:
            streams[1].close()
        return status, (json.loads(answer) if answer else {})

    async def subscribe(self, endpoint: str, family: str) -> str:
        subscription = {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "bench",
            "criteria": f"Patient?family={family}",
            "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"},
            "extension": [
                {
                    "url": "https://headless-ehr.dev/fhir/StructureDefinition/subscription-secret",
                    "valueString": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                }
            ],
        }
        status, answer = await self.call("POST", "/Subscription", subscription)
        if status != 201 or answer.get("status") != "active":
            raise RuntimeError(f"the Subscription was not made active: {status} {answer}")
        return answer["id"]

    async def unsubscribe(self, sid: str) -> None:
        status, _ = await self.call("DELETE", f"/Subscription/{sid}")
        if status not in (200, 204):
            raise RuntimeError(f"deleting the Subscription answered {status}")


def patient(family: str) -> dict:
    return {**PATIENT, "name": [{"use": "official", "family": family, "given": ["Peter"]}]}


# -- the measurements ---------------------------------------------------------------------------


async def latency(node: Node, receipts: Receipts, family: str, n: int) -> list[float]:
    """ms from each create's 201 to its notification, one event at a time."""
    body = json.dumps(patient(family), separators=(",", ":")).encode()
    request = loadgen.http_request("POST", f"{PREFIX}/Patient", body, node.host, node.token)
    streams = await asyncio.open_connection("127.0.0.1", node.port)
    out = []
    try:
        for _ in range(n):
            status, answer, _ = await loadgen.exchange(streams, request)
            committed = time.perf_counter()
            if status != 201:
                raise RuntimeError(f"create answered {status}")
            rid = json.loads(answer)["id"]
            deadline = committed + 30
            while rid not in receipts.at:
                receipts.arrived.clear()
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"no notification of Patient/{rid} within 30 s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(receipts.arrived.wait(), 1)
            out.append((receipts.at[rid] - committed) * 1000)
            await asyncio.sleep(0.02)
    finally:
        streams[1].close()
    return out


async def drained(receipts: Receipts, expected: int, seconds: float = 300) -> float:
    """When (perf_counter) the receiver had `expected` notifications."""
    deadline = time.perf_counter() + seconds
    while receipts.count < expected:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"only {receipts.count} of {expected} notifications arrived")
        await asyncio.sleep(0.01)
    return receipts.last


@dataclass
class WriteRun:
    subscribed: bool
    result: loadgen.LoadResult
    delivered_per_s: float | None = None


async def writes(node: Node, receipts: Receipts, endpoint: str, clients: int, duration: float, one: bool) -> WriteRun:
    family = f"Bench{uuid.uuid4().hex[:8]}"
    sid = await node.subscribe(endpoint, family) if one else None
    before = receipts.count
    body = json.dumps(patient(family), separators=(",", ":")).encode()
    started = time.perf_counter()
    if GENERATOR.wrk:  # in its own process (a thread waits for it): the receiver here keeps running
        files = crud.Files(node.root / f"{family}.json", node.root / "unused.json", node.root / "ids.txt", node.root)
        files.create.write_bytes(body)
        files.ids.write_text("")
        seconds = round(duration)
        result = await asyncio.to_thread(GENERATOR.run, node.port, "create", clients, seconds, files, node.token)
    else:
        requests = loadgen.case_requests("create", PREFIX, body, [], node.host, node.token)
        result = await loadgen.http_load("127.0.0.1", node.port, requests, clients, duration)
    run = WriteRun(one, result)
    if sid is not None:
        ok = result.requests - result.errors
        last = await drained(receipts, before + ok)
        run.delivered_per_s = ok / (last - started)
        await node.unsubscribe(sid)
    return run


async def burst(node: Node, receipts: Receipts, endpoint: str, total: int, size: int = 500) -> tuple[float, float]:
    """(writes/s, delivered/s) of `total` creates in transaction Bundles."""
    family = f"Burst{uuid.uuid4().hex[:8]}"
    sid = await node.subscribe(endpoint, family)
    before = receipts.count
    one = {"request": {"method": "POST", "url": "Patient"}, "resource": patient(family)}
    started = time.perf_counter()
    for k in range(0, total, size):
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [one] * min(size, total - k)}
        status, _ = await node.call("POST", "", bundle)
        if status != 200:
            raise RuntimeError(f"a transaction answered {status}")
    written = time.perf_counter()
    last = await drained(receipts, before + total)
    await node.unsubscribe(sid)
    return total / (written - started), total / (last - started)


# -- the report ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(args: argparse.Namespace, code: str, where: str, lat: list[float], runs: list[WriteRun], burst_rates):
    started = args.started.strftime("%Y-%m-%d %H:%M")
    none = [r.result.rps for r in runs if not r.subscribed]
    one = [r.result.rps for r in runs if r.subscribed]
    share = statistics.mean(one) / statistics.mean(none)
    delivered = [r.delivered_per_s or 0.0 for r in runs if r.subscribed]
    p50, p99 = pct(lat, 0.50), pct(lat, 0.99)
    best_delivered = max([*delivered, burst_rates[1]])
    lines = [
        f"### {started} UTC: {where}",
        "",
        f"- machine: {machine()}",
        f"- server code: {code} (a copy taken at the start serves every run)",
        f"- command: `python bench/events.py {' '.join(args.argv)}`",
        f"- generator of the write runs: {GENERATOR.label}",
        "- `ehr serve --workers 1`, EHR_AUTH=on (system token), EHR_AUDIT=on; receiver in the bench process;"
        " one R4 rest-hook Subscription `Patient?family=…`, full-resource (a PUT per event, the Patient read as"
        " the owner at delivery)",
        "",
        "| measure | value | target |",
        "|---|---:|---|",
        f"| latency commit → webhook p50 ({len(lat)} events, one at a time) | {p50:.1f} ms |"
        f" ≤ {TARGET_P50_MS:.0f} ms: {verdict(p50 <= TARGET_P50_MS)} |",
        f"| latency commit → webhook p99 | {p99:.1f} ms | - |",
        f"| creates/s at {args.clients} clients, no subscription (mean of {len(none)}) |"
        f" {statistics.mean(none):,.0f} | - |",
        f"| creates/s at {args.clients} clients, one subscription (mean of {len(one)}) |"
        f" {statistics.mean(one):,.0f} | - |",
        f"| writes with one / with none | {share:.2f} | ≥ {TARGET_WRITE_SHARE:.2f}:"
        f" {verdict(share >= TARGET_WRITE_SHARE)} |",
        f"| delivered/s while writing (first write to last receipt) | {statistics.mean(delivered):,.0f} | - |",
        f"| burst of {args.burst} in transactions of 500: written/s | {burst_rates[0]:,.0f} | - |",
        f"| burst: delivered/s (first write to last receipt) | {burst_rates[1]:,.0f} |"
        f" ≥ {TARGET_DELIVERED:,.0f}: {verdict(best_delivered >= TARGET_DELIVERED)} |",
        "",
        "Write runs, in order:",
        "",
        "| subscription | creates/s | p50 ms | p99 ms | errors | delivered/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        d = "-" if r.delivered_per_s is None else f"{r.delivered_per_s:,.0f}"
        res = r.result
        lines.append(
            f"| {'one' if r.subscribed else 'none'} | {res.rps:,.0f} | {res.p50_ms:.2f} | {res.p99_ms:.2f}"
            f" | {res.errors} | {d} |"
        )
    summary = (
        f"| {started} | {code.split()[1] if code.startswith('commit') else '-'} | {p50:.1f} | {p99:.1f}"
        f" | {statistics.mean(delivered):,.0f} | {burst_rates[1]:,.0f} | {share:.2f} |"
    )
    return "\n".join(lines), summary


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per write run")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of creates before the measured write runs")
    p.add_argument("--rounds", type=int, default=2, help="write runs without and with a subscription, alternated")
    p.add_argument("--latency-events", type=int, default=300)
    p.add_argument("--burst", type=int, default=5000)
    p.add_argument("--database-url", help="an external PostgreSQL (a throw-away database); default: embedded")
    p.add_argument("--no-results", action="store_true", help="print only; do not record in RESULTS.md")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    args.started = datetime.now(UTC)
    return args


async def measure(args: argparse.Namespace, node: Node) -> tuple[list[float], list[WriteRun], tuple[float, float]]:
    receipts = Receipts()
    server = await asyncio.get_running_loop().create_server(lambda: Hook(receipts), "127.0.0.1", 0)
    endpoint = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    try:
        family = f"Latency{uuid.uuid4().hex[:8]}"
        sid = await node.subscribe(endpoint, family)
        await latency(node, receipts, family, 20)  # warm-up: connections, prepared statements
        lat = await latency(node, receipts, family, args.latency_events)
        await node.unsubscribe(sid)
        await writes(node, receipts, endpoint, args.clients, args.warmup, one=False)  # not measured
        runs = []
        for _ in range(args.rounds):
            runs.append(await writes(node, receipts, endpoint, args.clients, args.duration, one=False))
            runs.append(await writes(node, receipts, endpoint, args.clients, args.duration, one=True))
        rates = await burst(node, receipts, endpoint, args.burst)
    finally:
        server.close()
    return lat, runs, rates


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="ehrb-events-", dir="/tmp"))
    code = snapshot_code(root / "code")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "code"), env.get("PYTHONPATH")]))
    env.update(crud.SERVER_ENV, EHR_AUTH="on", EHR_AUDIT="on", EHR_MAX_BODY_BYTES=str(64 * 1024 * 1024))
    env["EHR_WEBHOOK_BLOCKED_NETWORKS"] = ""  # the receiver is on loopback
    data_dir = root / "data"
    where = "PostgreSQL (embedded)"
    if args.database_url:
        env["EHR_DATABASE_URL"] = args.database_url
        bench_admin_client(env)
        where = "PostgreSQL at --database-url"
    port = free_port()
    cmd = ["ehr", "serve", "--port", str(port), "--data-dir", str(data_dir), "--log-level", "warning"]
    served = Served("ehr serve", cmd, env, root / "server.log")
    try:
        served.start()
        node = Node(served, env, None if args.database_url else data_dir, root)
        lat, runs, rates = loadgen.run(measure(args, node))
    finally:
        served.stop()
        shutil.rmtree(root, ignore_errors=True)
    text, summary = report(args, code, where, lat, runs, rates)
    print(text)
    if not args.no_results:
        results.record("events", text, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
