"""Real `ehr serve` processes publishing to the machine's NATS: each committed change reaches a
durable consumer exactly once by Nats-Msg-Id, through a SIGKILL between publish and mark and
with one of two nodes killed mid-stream."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import nats
import nats.js.errors

from tests.e2e.test_serve import Server, _env
from tests.events.nats_support import DurableConsumer, Stream, eventually, nats_url, unique_stream

__all__ = ["nats_url"]  # the fixture, used by name

HOLD = 4242  # the advisory lock the publisher's cursor update waits for, while the test holds it
# Makes the cursor update of the 'nats' reader wait for lock HOLD: the publisher has published
# and been acknowledged, and cannot mark the events sent until the test lets go.
HOLD_CURSOR = f"""
CREATE FUNCTION test_hold_cursor() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({HOLD});
    RETURN NEW;
END $$;
CREATE TRIGGER test_hold_cursor BEFORE UPDATE ON event_cursor
    FOR EACH ROW WHEN (NEW.name = 'nats') EXECUTE FUNCTION test_hold_cursor();
"""


async def all_event_ids(conn: asyncpg.Connection) -> list[str]:
    return [str(r[0]) for r in await conn.fetch("SELECT event_id FROM outbox ORDER BY created_at, seq")]


async def stored_messages(url: str, stream: Stream) -> int:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream.name)).state.messages
    except nats.js.errors.NotFoundError:  # the server has not reached NATS yet
        return 0
    finally:
        await nc.close()


def create_patients(server: Server, n: int) -> list[str]:
    headers = server.headers()
    return [
        httpx.post(f"{server.base}/Patient", json={"resourceType": "Patient"}, headers=headers).json()["id"]
        for _ in range(n)
    ]


def create_in_one_transaction(server: Server, n: int) -> None:
    entries = [{"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}] * n
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    assert httpx.post(server.base, json=bundle, headers=server.headers()).status_code == 200


async def test_a_node_killed_between_publish_and_mark_republishes_and_jetstream_keeps_one_copy(
    fresh_database, nats_url
):
    async with unique_stream(nats_url) as stream:
        env = _env(EHR_DATABASE_URL=fresh_database, **stream.env(nats_url))
        conn = await asyncpg.connect(fresh_database)
        first = Server(env)
        again = None
        try:
            first.wait_ready()
            await conn.execute(HOLD_CURSOR)
            await conn.execute("SELECT pg_advisory_lock($1)", HOLD)
            create_in_one_transaction(first, 5)  # one commit: one round publishes them all
            expected = await all_event_ids(conn)
            assert len(expected) == 5
            assert await eventually(lambda: _at_least(stored_messages(nats_url, stream), 5))  # acknowledged
            first.proc.kill()  # SIGKILL: published, never marked
            first.proc.wait()
            await conn.execute("SELECT pg_advisory_unlock($1)", HOLD)
            assert await eventually(lambda: _no_events_backend(conn))  # its transaction rolled back
            cursor = await conn.fetchrow("SELECT after_at, after_seq FROM event_cursor WHERE name = 'nats'")
            last = await conn.fetchrow("SELECT created_at, seq FROM outbox ORDER BY created_at DESC, seq DESC LIMIT 1")
            assert tuple(cursor) < tuple(last)  # not marked sent

            again = Server(env)
            again.wait_ready()
            consumer = DurableConsumer(nats_url, stream)
            received = await consumer.fetch_until(lambda r: {x.msg_id for x in r} >= set(expected))
            assert [r.msg_id for r in received] == expected  # each once, in commit order
            assert await stored_messages(nats_url, stream) == 5  # the copies were dropped
            assert await eventually(lambda: _cursor_at(conn, last))  # and now marked sent
            assert again.stop() == 0  # a clean shutdown with the publisher running
        finally:
            await conn.close()
            first.stop()
            if again is not None:
                again.stop()
        assert "already in stream" in again.proc.stdout.read()  # it did republish them


async def test_two_nodes_publish_each_change_once_though_one_is_killed_mid_stream(fresh_database, nats_url):
    async with unique_stream(nats_url) as stream:
        env = _env(EHR_DATABASE_URL=fresh_database, **stream.env(nats_url))
        a, b = Server(env), Server(env)
        conn = await asyncpg.connect(fresh_database)
        try:
            a.wait_ready()
            b.wait_ready()
            for _ in range(10):
                await asyncio.to_thread(create_patients, a, 2)
                await asyncio.to_thread(create_patients, b, 2)
            a.proc.kill()
            a.proc.wait()
            await asyncio.to_thread(create_patients, b, 20)
            expected = await all_event_ids(conn)
            assert len(expected) == 60
            consumer = DurableConsumer(nats_url, stream)
            received = await consumer.fetch_until(lambda r: {x.msg_id for x in r} >= set(expected))
            assert sorted(r.msg_id for r in received) == sorted(expected)  # every one, once
        finally:
            await conn.close()
            a.stop()
            b.stop()


async def _at_least(count, n: int) -> bool:
    return await count >= n


async def _no_events_backend(conn: asyncpg.Connection) -> bool:
    """No transaction of a killed node's event workers is left (their backends saw the client gone)."""
    return not await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'headless-ehr-events' AND backend_xid IS NOT NULL"
    )


async def _cursor_at(conn: asyncpg.Connection, last: asyncpg.Record) -> bool:
    cursor = await conn.fetchrow("SELECT after_at, after_seq FROM event_cursor WHERE name = 'nats'")
    return tuple(cursor) >= tuple(last)
