"""Broker publication throughput: committed events published to JetStream per second.

Writes N Patients (batched creates, events on) into a scratch database, then lets one
BrokerPublisher (events/broker.py) publish the backlog round by round: pipelined
publishes, every acknowledgement awaited, the cursor advanced and committed. Prints
events/s. Then times single creates from their commit to their message's arrival at a
subscriber, with the publisher running as in `ehr serve` (p50, p99). Needs a PostgreSQL
server and NATS with JetStream:

    python bench/broker.py --events 20000
    python bench/broker.py --database-url postgresql://postgres@127.0.0.1:5432/postgres --nats-url nats://127.0.0.1:4222
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from headless_ehr.app import create_app
from headless_ehr.auth.principal import SYSTEM
from headless_ehr.config import Settings
from headless_ehr.events.broker import BrokerPublisher


async def run(server_dsn: str, nats_url: str, events: int, latency: int) -> None:
    name = f"bench_nats_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = urlunsplit(urlsplit(server_dsn)._replace(path="/" + name))
    stream, prefix = f"BENCH_{name}", f"bench{name.replace('_', '')}"
    try:
        app = create_app(Settings(database_url=dsn, data_dir=Path(tempfile.mkdtemp()), audit=False))
        async with app.router.lifespan_context(app):
            publisher = BrokerPublisher(dsn, nats_url, stream, prefix)
            await publisher.open()  # its cursor starts now: the writes below are its backlog
            store = app.state.store
            started = time.monotonic()
            for first in range(0, events, 500):
                count = min(500, events - first)
                resource = {"resourceType": "Patient", "active": True}
                await store.insert_prepared(
                    [store.prepare_create(SYSTEM, resource, f"b{first + i}", "POST") for i in range(count)]
                )
            print(f"wrote {events:,} Patients in {time.monotonic() - started:.1f} s")
            await publisher.connect()
            started, published = time.monotonic(), 0
            while (done := await publisher.publish_next()) is not None and done.published:
                published += done.published
            seconds = time.monotonic() - started
            print(f"published {published:,} events in {seconds:.2f} s: {published / seconds:,.0f} events/s")
            await publisher.close()
            if latency:
                await _latency(app.state.store, dsn, nats_url, stream, prefix, latency)
    finally:
        nc = await nats.connect(nats_url)
        with contextlib.suppress(Exception):  # the stream was never made
            await nc.jetstream().delete_stream(stream)
        await nc.close()
        admin = await asyncpg.connect(server_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _latency(store, dsn: str, nats_url: str, stream: str, prefix: str, writes: int) -> None:
    """Commit to message: one create at a time, with the publisher running as in `ehr serve`."""
    publisher = BrokerPublisher(dsn, nats_url, stream, prefix)
    await publisher.start()
    nc = await nats.connect(nats_url)
    arrived: dict[str, asyncio.Future[float]] = {}

    async def on_message(msg) -> None:
        rid = orjson.loads(msg.data)["resourceId"]
        if rid in arrived and not arrived[rid].done():
            arrived[rid].set_result(time.monotonic())

    await nc.subscribe(f"{prefix}.Patient.create", cb=on_message)
    try:
        samples = []
        for i in range(writes):
            rid = f"lat{i}"
            arrived[rid] = asyncio.get_running_loop().create_future()
            committed = time.monotonic()
            await store.insert_prepared([store.prepare_create(SYSTEM, {"resourceType": "Patient"}, rid, "POST")])
            samples.append((await asyncio.wait_for(arrived[rid], 30) - committed) * 1000)
            await asyncio.sleep(0.01)  # one at a time, not a backlog
        samples.sort()
        p50, p99 = samples[len(samples) // 2], samples[min(len(samples) - 1, len(samples) * 99 // 100)]
        print(f"commit to NATS message, {writes} single creates: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    finally:
        await nc.close()
        await publisher.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--latency", type=int, default=200, help="creates timed from commit to message (0: none)")
    args = parser.parse_args()
    asyncio.run(run(args.database_url, args.nats_url, args.events, args.latency))


if __name__ == "__main__":
    main()
