"""The audit log is a hash chain: `ehr audit verify` names the first record changed, deleted or
inserted directly in PostgreSQL; parallel writes on two nodes leave one unbroken chain."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from headless_ehr.audit.chain import Entry, append, record_hash, vacuum_queues, verify
from headless_ehr.audit.event import Interaction, audit_event, read_template
from headless_ehr.audit.pending import register
from headless_ehr.auth.principal import Principal
from headless_ehr.db.migrate import migrate

SRC = Path(__file__).resolve().parents[2] / "src"


def _events(n: int) -> list[Entry]:
    who = Principal.from_scopes("c2", "system/*.rs", client_id="c2")
    return [audit_event(Interaction("read", 200, f"Patient/q{i}"), who, "10.0.0.2") for i in range(n)]


def ehr(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    """The `ehr` command, as a separate process on the given database."""
    env = {**os.environ, "EHR_DATABASE_URL": dsn, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "headless_ehr.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
async def chain(fresh_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A database of its own holding a chain of ten AuditEvents; its triggers off, as an intruder's would be."""
    conn = await asyncpg.connect(fresh_database)
    await migrate(conn)
    who = Principal.from_scopes("c1", "system/*.rs", client_id="c1")
    entries = [audit_event(Interaction("read", 200, f"Patient/p{i}"), who, "10.0.0.1") for i in range(1, 11)]
    await append(conn, entries[:4])
    await append(conn, entries[4:])  # two batches: the chain continues across appends
    await conn.execute("SET session_replication_role = replica")  # a superuser can skip the triggers
    yield conn
    await conn.close()


async def _verify_names(dsn: str, seq: int, what: str) -> None:
    result = await asyncio.to_thread(ehr, "audit", "verify", dsn=dsn)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"audit record seq {seq} " in result.stderr
    assert what in result.stderr


async def _id_at(conn: asyncpg.Connection, seq: int) -> str:
    return str(await conn.fetchval("SELECT id FROM audit_event WHERE seq = $1", seq))


async def test_verify_passes_an_untouched_chain(chain, fresh_database):
    result = await asyncio.to_thread(ehr, "audit", "verify", dsn=fresh_database)
    assert result.returncode == 0, result.stderr
    assert "10 records" in result.stdout


async def test_verify_names_a_record_whose_content_was_changed(chain, fresh_database):
    content = orjson.loads(await chain.fetchval("SELECT content FROM audit_event WHERE seq = 6"))
    content["outcome"] = "0" if content["outcome"] != "0" else "4"
    await chain.execute("UPDATE audit_event SET content = $1 WHERE seq = 6", orjson.dumps(content))
    await _verify_names(fresh_database, 6, await _id_at(chain, 6))
    result = await verify(chain)
    assert result.count == 5
    assert result.broken is not None and "content" in result.broken.problem


async def test_verify_names_a_changed_record_even_when_its_hash_was_recomputed(chain, fresh_database):
    row = await chain.fetchrow("SELECT prev_hash, content FROM audit_event WHERE seq = 3")
    content = orjson.loads(row["content"])
    content["recorded"] = "2020-01-01T00:00:00.000Z"
    forged = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    digest = record_hash(bytes(row["prev_hash"]), 3, forged)
    await chain.execute("UPDATE audit_event SET content = $1, hash = $2 WHERE seq = 3", forged, digest)
    await _verify_names(fresh_database, 4, "link does not match")


async def test_verify_names_a_record_whose_search_columns_were_changed(chain, fresh_database):
    await chain.execute("UPDATE audit_event SET patients = '{}' WHERE seq = 2")
    await _verify_names(fresh_database, 2, "search columns")


async def test_verify_names_where_a_record_was_deleted(chain, fresh_database):
    await chain.execute("DELETE FROM audit_event WHERE seq = 5")
    await _verify_names(fresh_database, 6, "record 5 was deleted before it")


async def test_verify_names_a_record_inserted_into_the_chain(chain, fresh_database):
    # the intruder makes room at seq 8 and inserts a well-formed record linked to seq 7
    await chain.execute("UPDATE audit_event SET seq = -seq WHERE seq >= 8")
    await chain.execute("UPDATE audit_event SET seq = -seq + 1 WHERE seq < 0")
    prev = bytes(await chain.fetchval("SELECT hash FROM audit_event WHERE seq = 7"))
    who = Principal.from_scopes("c1", "system/*.rs", client_id="c1")
    entry = audit_event(Interaction("read", 200, "Patient/planted"), who, "10.0.0.1")
    await chain.execute(
        "INSERT INTO audit_event VALUES (8, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        entry.id,
        entry.recorded,
        entry.content,
        prev,
        record_hash(prev, 8, entry.content),
        *entry.index.row(),
    )
    await _verify_names(fresh_database, 8, f"(AuditEvent/{entry.id}): it was inserted")


async def test_verify_names_a_record_appended_with_a_made_up_hash(chain, fresh_database):
    who = Principal.from_scopes("c1", "system/*.rs", client_id="c1")
    entry = audit_event(Interaction("read", 200, "Patient/planted"), who, "10.0.0.1")
    last = bytes(await chain.fetchval("SELECT hash FROM audit_event WHERE seq = 10"))
    await chain.execute(
        "INSERT INTO audit_event VALUES (11, $1, $2, $3, $4, $5, '{}', '{}', '{}', 'read', '0', 'R', null)",
        entry.id,
        entry.recorded,
        entry.content,
        last,
        bytes(32),
    )
    await _verify_names(fresh_database, 11, str(entry.id))


async def test_export_writes_every_event_as_ndjson_and_since_filters_them(chain, fresh_database):
    result = await asyncio.to_thread(ehr, "audit", "export", dsn=fresh_database)
    assert result.returncode == 0, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [e["entity"][0]["what"]["reference"] for e in lines] == [f"Patient/p{i}" for i in range(1, 11)]
    later = await asyncio.to_thread(ehr, "audit", "export", "--since", "2999-01-01", dsn=fresh_database)
    assert later.returncode == 0 and later.stdout == ""
    bad = await asyncio.to_thread(ehr, "audit", "export", "--since", "yesterday", dsn=fresh_database)
    assert bad.returncode == 2


async def test_parallel_writes_on_two_nodes_leave_one_unbroken_chain(client, app_with, app, db):
    second = await app_with()
    await app.state.audit.flush()
    before = await db.fetchval("SELECT coalesce(max(seq), 0) FROM audit_event")

    async def create(c, i: int) -> int:
        response = await c.post("/Basic", json={"resourceType": "Basic", "code": {"text": f"chain-{i}"}})
        return response.status_code

    statuses = await asyncio.gather(*(create(client if i % 2 else second, i) for i in range(60)))
    assert statuses == [201] * 60
    await app.state.audit.flush()
    await second._transport.app.state.audit.flush()  # type: ignore[attr-defined]
    seqs = [r["seq"] for r in await db.fetch("SELECT seq FROM audit_event WHERE seq > $1 ORDER BY seq", before)]
    assert len(seqs) >= 60
    assert seqs == list(range(before + 1, before + 1 + len(seqs)))
    async with db.acquire() as conn:
        result = await verify(conn)
    assert result.broken is None
    assert result.count == before + len(seqs)


async def test_two_nodes_chaining_at_once_never_fork_the_chain(db):
    """Each node queues its events and chains whatever is queued; the chain's lock makes
    them take turns, and an event queued twice is chained once."""
    async with db.acquire() as a, db.acquire() as b:
        twice = _events(1)
        await asyncio.gather(append(a, _events(5) + twice), append(b, _events(5) + twice))
        await asyncio.gather(append(a, _events(3)), append(b, _events(3)))
        result = await verify(a)
        assert await a.fetchval("SELECT count(*) FROM audit_event WHERE id = $1", twice[0].id) == 1
        assert await a.fetchval("SELECT count(*) FROM audit_pending") == 0
    assert result.broken is None
    assert result.count >= 17


async def test_queued_reads_and_whole_events_are_chained_together_in_time_order(db):
    """A read queued as a narrow row (migration 0026) is chained as the event its template
    makes, in recorded order among the events queued whole; verify checks them alike."""
    who = Principal.from_scopes("c3", "system/*.rs", client_id="c3")
    template = read_template(who, "10.0.0.3")
    assert template is not None
    queue_read = "INSERT INTO audit_read_pending VALUES (gen_random_uuid(), clock_timestamp(), $1, $2) RETURNING id"
    async with db.acquire() as conn:
        tid = await register(conn, template)
        first = await conn.fetchval(queue_read, tid, "qr1")
        await asyncio.sleep(0.01)
        whole = _events(2)
        await asyncio.sleep(0.01)
        last = await conn.fetchval(queue_read, tid, "qr2")
        await append(conn, whole)
        rows = await conn.fetch(
            "SELECT id, content, patients, agents, subtype FROM audit_event WHERE id = ANY($1::uuid[]) ORDER BY seq",
            [first, whole[0].id, whole[1].id, last],
        )
        result = await verify(conn)
    assert [str(r["id"]) for r in rows] == [str(first), str(whole[0].id), str(whole[1].id), str(last)]
    read = orjson.loads(rows[0]["content"])
    assert read["id"] == str(first) and read["entity"][0]["what"]["reference"] == "Patient/qr1"
    assert read["agent"][0]["who"]["identifier"]["value"] == "c3"
    assert rows[0]["patients"] == ["Patient/qr1"] and rows[0]["agents"] == template.agents
    assert result.broken is None


async def test_the_recorder_vacuums_the_queues_while_events_are_chained(db):
    count = (
        "SELECT pg_stat_clear_snapshot(), (SELECT vacuum_count FROM pg_stat_user_tables"
        " WHERE relname = 'audit_read_pending')"
    )
    async with db.acquire() as a, db.acquire() as b:
        before = (await a.fetchrow(count))[1]
        await asyncio.gather(append(a, _events(3)), vacuum_queues(b))
        assert (await a.fetchrow(count))[1] == before + 1
        assert await a.fetchval("SELECT count(*) FROM audit_queued") == 0
