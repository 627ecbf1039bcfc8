"""The broker stream: every committed change on JetStream once, acknowledged before it is marked sent."""

from __future__ import annotations

import asyncio
import logging
import uuid

import nats
import orjson
import pytest
from nats.js.api import StreamConfig

from headless_ehr.auth.principal import SYSTEM
from headless_ehr.bulk.importer import Importer
from headless_ehr.events.broker import DUPLICATE_WINDOW, READER, BrokerPublisher, StreamError, ensure_stream
from headless_ehr.events.outbox import claim, settled_after

from .nats_support import DurableConsumer, PrivateNats, Received, Stream, eventually, nats_url, unique_stream

__all__ = ["nats_url"]  # the fixture, used by name

JSON_PATCH = {"Content-Type": "application/json-patch+json"}


@pytest.fixture
async def stream(nats_url: str):
    async with unique_stream(nats_url) as made:
        yield made


@pytest.fixture
async def publishing(app_with, nats_url: str, stream: Stream):
    """A client of a node (an app on the shared database) that publishes to this test's stream."""
    return await app_with(**stream.settings(nats_url))


async def outbox_ids(db, refs: list[tuple[str, str]]) -> list[str]:
    """The event ids of these resources' changes, in commit order."""
    rows = await db.fetch(
        "SELECT o.event_id FROM outbox o JOIN unnest($1::text[], $2::text[]) AS k(t, i)"
        " ON o.resource_type = k.t AND o.id = k.i ORDER BY o.created_at, o.seq",
        [r[0] for r in refs],
        [r[1] for r in refs],
    )
    return [str(r[0]) for r in rows]


def of(received: list[Received], ids: set[str]) -> list[Received]:
    return [r for r in received if r.body["resourceId"] in ids]


async def consume(
    nats_url: str, stream: Stream, expected: list[str], ids: set[str], consumer: DurableConsumer | None = None
) -> list[Received]:
    """What a durable consumer has received about these resources, once it has seen every expected event."""
    consumer = consumer or DurableConsumer(nats_url, stream)
    got = await consumer.fetch_until(lambda r: {x.msg_id for x in of(r, ids)} >= set(expected))
    return of(got, ids)


async def patient_lifecycle(client) -> str:
    """Create, update, patch and delete one Patient; its id."""
    created = await client.post("/Patient", json={"resourceType": "Patient", "gender": "female"})
    assert created.status_code == 201
    pid = created.json()["id"]
    updated = await client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "gender": "male"})
    assert updated.status_code == 200
    patch = [{"op": "add", "path": "/active", "value": True}]
    patched = await client.patch(f"/Patient/{pid}", content=orjson.dumps(patch), headers=JSON_PATCH)
    assert patched.status_code == 200
    assert (await client.delete(f"/Patient/{pid}")).status_code in (200, 204)
    return pid


async def test_each_create_update_patch_and_delete_reaches_a_durable_consumer_once(publishing, db, nats_url, stream):
    pid = await patient_lifecycle(publishing)
    expected = await outbox_ids(db, [("Patient", pid)])
    assert len(expected) == 4
    received = await consume(nats_url, stream, expected, {pid})
    assert [r.msg_id for r in received] == expected  # each once, by its event id, in commit order


async def test_the_subject_names_type_and_verb_and_the_body_the_change(publishing, db, nats_url, stream):
    pid = await patient_lifecycle(publishing)
    expected = await outbox_ids(db, [("Patient", pid)])
    received = await consume(nats_url, stream, expected, {pid})
    verbs = ["create", "update", "update", "delete"]  # a patch is an update on the subject
    assert [r.subject for r in received] == [f"{stream.prefix}.Patient.{v}" for v in verbs]
    assert [r.body["interaction"] for r in received] == ["create", "update", "patch", "delete"]
    assert [r.body["versionId"] for r in received] == ["1", "2", "3", "4"]
    first = received[0].body
    assert first["id"] == expected[0] and first["resourceType"] == "Patient" and first["resourceId"] == pid
    assert isinstance(first["seq"], int) and first["time"].endswith("+00:00")


async def test_transaction_bundle_entries_are_published_once_each(publishing, db, nats_url, stream):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:5b4a3a0e-0c38-4f0e-9c55-1f1d2f3b4c5d",
                "resource": {"resourceType": "Patient", "gender": "other"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "weight"},
                    "subject": {"reference": "urn:uuid:5b4a3a0e-0c38-4f0e-9c55-1f1d2f3b4c5d"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    done = await publishing.post("", json=bundle)
    assert done.status_code == 200
    refs = [tuple(e["response"]["location"].split("/")[:2]) for e in done.json()["entry"]]
    expected = await outbox_ids(db, refs)
    assert len(expected) == 2
    received = await consume(nats_url, stream, expected, {r[1] for r in refs})
    assert sorted(r.msg_id for r in received) == sorted(expected)
    assert {r.subject for r in received} == {f"{stream.prefix}.Patient.create", f"{stream.prefix}.Observation.create"}


async def test_imported_resources_are_published_once_each(app, publishing, db, nats_url, stream, tmp_path):
    tag = uuid.uuid4().hex
    lines = [{"resourceType": "Patient", "id": f"{tag}-{i}"} for i in range(30)]
    (tmp_path / "p.ndjson").write_bytes(b"\n".join(orjson.dumps(p) for p in lines))
    report = await Importer(app.state.pool, app.state.store, SYSTEM, batch_size=10).run([tmp_path / "p.ndjson"])
    assert report.resources == 30
    ids = {p["id"] for p in lines}
    expected = await outbox_ids(db, [("Patient", i) for i in ids])
    assert len(expected) == 30
    received = await consume(nats_url, stream, expected, ids)
    assert sorted(r.msg_id for r in received) == sorted(expected)


@pytest.fixture
async def publisher(settings, app, nats_url: str, stream: Stream):
    """A publisher driven by the test, round by round (no background task)."""
    made = BrokerPublisher(settings.database_url, nats_url, stream.name, stream.prefix)
    await made.open()
    try:
        yield made
    finally:
        await made.close()


async def test_events_republished_after_a_crash_between_ack_and_mark_are_dropped_as_duplicates(
    publisher, client, db, nats_url, stream
):
    await publisher.connect()
    while (await publisher.publish_next()).published:  # whatever earlier tests left
        pass
    pids = [(await client.post("/Patient", json={"resourceType": "Patient"})).json()["id"] for _ in range(5)]
    expected = await outbox_ids(db, [("Patient", p) for p in pids])
    # the crash: published and acknowledged, but the cursor's transaction never commits
    async with db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        position = await claim(conn, READER)
        assert position is not None
        events = await settled_after(conn, position, 500)
        assert {e.event_id for e in events} >= set(expected)
        assert await publisher.publish(events) == 0
        await tx.rollback()
    done = await publisher.publish_next()  # the next node, or this one restarted, publishes them again
    assert done is not None and done.published == len(events) and done.duplicates == len(events)
    received = await consume(nats_url, stream, expected, set(pids))
    assert sorted(r.msg_id for r in received) == sorted(expected)  # JetStream kept one of each


async def test_an_unacknowledged_publish_leaves_the_events_unsent(publisher, client, db, nats_url, stream):
    nc = await nats.connect(nats_url)
    try:  # our stream, but its subjects are not ours: no publish is acknowledged
        await nc.jetstream().add_stream(StreamConfig(name=stream.name, subjects=[f"{stream.prefix}x.>"]))
        await publisher.connect()
        pid = (await client.post("/Patient", json={"resourceType": "Patient"})).json()["id"]
        before = await db.fetchrow("SELECT after_at, after_seq FROM event_cursor WHERE name = $1", READER)
        with pytest.raises(nats.errors.Error):
            await publisher.publish_next()
        after = await db.fetchrow("SELECT after_at, after_seq FROM event_cursor WHERE name = $1", READER)
        assert tuple(after) == tuple(before)
        config = StreamConfig(name=stream.name, subjects=[f"{stream.prefix}.>"], duplicate_window=60)
        await nc.jetstream().update_stream(config)
        while (await publisher.publish_next()).published:
            pass
    finally:
        await nc.close()
    expected = await outbox_ids(db, [("Patient", pid)])
    received = await consume(nats_url, stream, expected, {pid})
    assert [r.msg_id for r in received] == expected


async def test_the_stream_is_created_with_the_prefix_subjects_and_a_duplicate_window(publisher, nats_url, stream):
    await publisher.connect()
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(stream.name)
    finally:
        await nc.close()
    assert info.config.subjects == [f"{stream.prefix}.>"]
    assert info.config.duplicate_window == DUPLICATE_WINDOW.total_seconds()


async def test_writes_succeed_while_nats_is_down_and_are_published_once_it_is_up(app_with, db):
    broker = PrivateNats()
    stream = Stream.unique()
    try:
        node = await app_with(**stream.settings(broker.url))  # NATS not started yet
        pid = await patient_lifecycle(node)
        expected = await outbox_ids(db, [("Patient", pid)])
        broker.start()
        received = await consume(broker.url, stream, expected, {pid})
        assert [r.msg_id for r in received] == expected
    finally:
        broker.close()


async def test_an_outage_of_nats_is_logged_once_and_its_end_once(app_with, caplog):
    caplog.set_level(logging.INFO, logger="headless_ehr.events.broker")
    broker = PrivateNats()
    stream = Stream.unique()
    try:
        await app_with(**stream.settings(broker.url))  # NATS not started yet
        await asyncio.sleep(2.5)  # several connection attempts, a second apart
        broker.start()

        async def back() -> bool:
            return any("reachable again" in r.getMessage() for r in caplog.records)

        assert await eventually(back)
    finally:
        broker.close()
    said = [r.getMessage() for r in caplog.records if r.name == "headless_ehr.events.broker"]
    assert sum("unreachable" in m for m in said) == 1 and sum("reachable again" in m for m in said) == 1


async def test_changes_made_while_nats_restarts_are_published_once_it_is_back(app_with, db):
    broker = PrivateNats()
    stream = Stream.unique()
    broker.start()
    try:
        node = await app_with(**stream.settings(broker.url))
        first = (await node.post("/Patient", json={"resourceType": "Patient"})).json()["id"]
        before = await outbox_ids(db, [("Patient", first)])
        consumer = DurableConsumer(broker.url, stream)
        assert await consume(broker.url, stream, before, {first}, consumer)  # flowing
        broker.stop()
        later = await patient_lifecycle(node)
        expected = await outbox_ids(db, [("Patient", later)])

        async def unsent() -> bool:
            cursor = await db.fetchrow("SELECT after_at FROM event_cursor WHERE name = $1", READER)
            last = await db.fetchval("SELECT max(created_at) FROM outbox WHERE id = $1", later)
            return cursor[0] < last

        assert await unsent()  # the cursor waits for NATS
        broker.start()
        received = await consume(broker.url, stream, expected, {first, later}, consumer)
        assert [r.msg_id for r in received] == before + expected  # nothing lost, nothing twice
        assert await eventually(lambda: _negate(unsent))
    finally:
        broker.close()


async def _negate(check) -> bool:
    return not await check()


async def test_a_stream_that_cannot_be_made_is_a_clear_error(nats_url, stream):
    nc = await nats.connect(nats_url)
    try:  # another stream already takes our subjects
        await nc.jetstream().add_stream(StreamConfig(name=f"{stream.name}_OTHER", subjects=[f"{stream.prefix}.>"]))
        with pytest.raises(StreamError, match=stream.name):
            await ensure_stream(nc.jetstream(), stream.name, stream.prefix)
    finally:
        await nc.jetstream().delete_stream(f"{stream.name}_OTHER")
        await nc.close()
