"""Broker publication throughput: committed events published to JetStream per second.

Writes N Patients (batched creates, events on) into a scratch database, then lets one
BrokerPublisher (events/broker.py) publish the backlog round by round: pipelined
publishes, every acknowledgement awaited, the cursor advanced and committed. Prints
events/s. Needs a PostgreSQL server and NATS with JetStream:

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from headless_ehr.app import create_app
from headless_ehr.auth.principal import SYSTEM
from headless_ehr.config import Settings
from headless_ehr.events.broker import BrokerPublisher


async def run(server_dsn: str, nats_url: str, events: int) -> None:
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
    finally:
        nc = await nats.connect(nats_url)
        with contextlib.suppress(Exception):  # the stream was never made
            await nc.jetstream().delete_stream(stream)
        await nc.close()
        admin = await asyncpg.connect(server_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    args = parser.parse_args()
    asyncio.run(run(args.database_url, args.nats_url, args.events))


if __name__ == "__main__":
    main()
