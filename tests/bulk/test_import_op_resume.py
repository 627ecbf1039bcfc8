"""$import resumes where it stopped: units commit with their input's position, fenced on the
claim, so a node that dies or loses its claim costs neither a line nor a second version."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from headless_ehr.bulk import import_jobs
from headless_ehr.bulk.caller import caller_of
from headless_ehr.bulk.import_jobs import LeaseLost
from headless_ehr.bulk.import_sources import local_path
from headless_ehr.bulk.importer import Importer
from tests.bulk.exporting import app_of
from tests.bulk.importing import kick_off, parameters, tagged_patients, wait, write_input

LINES = 1200  # three units of 500


class _CrashAtUnit:
    """A ledger that commits units through the job's own, until the given unit: then the node 'dies'."""

    def __init__(self, claim: import_jobs.Claim, unit: int) -> None:
        self.claim, self.unit, self.units = claim, unit, 0

    async def record(self, conn: asyncpg.Connection, position: int, loaded: int, failed: Any) -> None:
        self.units += 1
        if self.units == self.unit:
            raise RuntimeError("killed")  # inside the unit's transaction: it rolls back
        await import_jobs.record(conn, self.claim, position, loaded, failed, 100)


async def test_an_input_resumes_after_its_last_committed_unit_with_no_version_twice(node: Any):
    first = await node(bulk_import_jobs=False)  # a node whose worker we drive by hand
    app = app_of(first)
    query, patients = tagged_patients(LINES, with_ids=True)
    url = write_input(first, patients)
    status_url = await kick_off(first, parameters(("Patient", url)))
    claim = await import_jobs.claim(app.state.bulk_pool)
    assert claim is not None
    importer = Importer(app.state.pool, app.state.store, caller_of(claim.job.caller), batch_size=500, concurrency=1)
    with pytest.raises(RuntimeError):
        await importer.load_ndjson(local_path(app.state.settings.data_dir, url), 0, _CrashAtUnit(claim, 2), "Patient")
    [row] = await import_jobs.inputs_of(app.state.bulk_pool, claim.job.id)
    assert (row.position, row.loaded) == (500, 500)  # the first unit only

    second = await node()  # takes the input over once the dead claim's lease has run out
    await app.state.bulk_pool.execute("UPDATE bulk_import_input SET lease_until = now() - interval '1 second'")
    app_of(second).state.imports.wake()
    manifest = await wait(second, status_url)
    assert manifest["output"][0]["count"] == LINES
    assert (await second.get(f"Patient?{query}&_summary=count")).json()["total"] == LINES
    versions = await app.state.pool.fetchval(
        "SELECT count(*) FROM resource_history WHERE resource_type = 'Patient' AND id = ANY($1::text[])",
        [p["id"] for p in patients],
    )
    assert versions == LINES  # one version each: no line loaded twice


async def test_a_claim_taken_over_by_another_node_can_no_longer_commit(node: Any):
    api = await node(bulk_import_jobs=False)
    pool = app_of(api).state.bulk_pool
    await kick_off(api, parameters(("Patient", write_input(api, []))))
    stalled = await import_jobs.claim(pool)
    assert stalled is not None
    await pool.execute("UPDATE bulk_import_input SET lease_until = now() - interval '1 second'")
    taker = await import_jobs.claim(pool)
    assert taker is not None and taker.input.seq == stalled.input.seq and taker.token != stalled.token
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(LeaseLost):
            await import_jobs.record(conn, stalled, 10, 10, [], 100)
    async with pool.acquire() as conn, conn.transaction():
        await import_jobs.record(conn, taker, 10, 10, [], 100)
    assert not await import_jobs.finish_input(pool, stalled, 1)
    assert await import_jobs.finish_input(pool, taker, 1)


async def test_a_live_claim_is_not_handed_out_twice(node: Any):
    api = await node(bulk_import_jobs=False)
    pool = app_of(api).state.bulk_pool
    await kick_off(api, parameters(("Patient", write_input(api, []))))
    assert await import_jobs.claim(pool) is not None
    assert await import_jobs.claim(pool) is None


async def test_a_cancelled_job_stops_its_input_at_the_next_unit(node: Any):
    api = await node(bulk_import_jobs=False)
    pool = app_of(api).state.bulk_pool
    status_url = await kick_off(api, parameters(("Patient", write_input(api, []))))
    claim = await import_jobs.claim(pool)
    assert claim is not None
    await api.delete(status_url)
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(LeaseLost):
            await import_jobs.record(conn, claim, 1, 1, [], 100)


async def test_the_job_completes_with_its_last_input_whichever_node_ends_it(node: Any):
    api = await node(bulk_import_jobs=False)
    pool = app_of(api).state.bulk_pool
    status_url = await kick_off(api, parameters(("Patient", write_input(api, [])), ("Patient", write_input(api, []))))
    a, b = await import_jobs.claim(pool), await import_jobs.claim(pool)
    assert a is not None and b is not None and a.input.seq != b.input.seq
    assert await import_jobs.finish_input(pool, b, 1)
    assert (await import_jobs.get(pool, a.job.id)).status == "running"  # type: ignore[union-attr]
    assert await import_jobs.finish_input(pool, a, 1)
    manifest = await wait(api, status_url)
    assert len(manifest["output"]) == 2


async def test_line_errors_kept_per_job_are_bounded_and_all_are_counted(node: Any):
    api = await node(bulk_import_jobs=False, bulk_import_max_errors=3)
    pool = app_of(api).state.bulk_pool
    await kick_off(api, parameters(("Patient", write_input(api, []))))
    claim = await import_jobs.claim(pool)
    assert claim is not None
    async with pool.acquire() as conn, conn.transaction():
        await import_jobs.record(conn, claim, 5, 0, [(n, "bad") for n in range(1, 6)], 3)
    [row] = await import_jobs.inputs_of(pool, claim.job.id)
    assert row.failed == 5
    assert await pool.fetchval("SELECT count(*) FROM bulk_import_error") == 3


async def test_x_progress_counts_what_the_inputs_committed(node: Any):
    api = await node(bulk_import_jobs=False)
    pool = app_of(api).state.bulk_pool
    inputs = [("Patient", write_input(api, [])), ("Patient", write_input(api, []))]
    status_url = await kick_off(api, parameters(*inputs))
    claim = await import_jobs.claim(pool)
    assert claim is not None
    async with pool.acquire() as conn, conn.transaction():
        await import_jobs.record(conn, claim, 12, 10, [(3, "bad"), (7, "bad")], 100)
    res = await api.get(status_url)
    assert res.status_code == 202
    assert res.headers["X-Progress"] == "10 resources loaded, 2 lines in error; 0 of 2 inputs done"


async def test_the_inputs_of_one_job_load_on_two_nodes_each_once(node: Any):
    first, second = await node(), await node()
    query, patients = tagged_patients(1200, with_ids=True)
    inputs = [("Patient", write_input(first, patients[i : i + 300])) for i in range(0, 1200, 300)]
    status_url = await kick_off(first, parameters(*inputs))
    app_of(second).state.imports.wake()
    manifest = await wait(first, status_url)
    assert [o["count"] for o in manifest["output"]] == [300] * 4
    assert (await second.get(f"Patient?{query}&_summary=count")).json()["total"] == 1200
    versions = await app_of(first).state.pool.fetchval(
        "SELECT count(*) FROM resource_history WHERE resource_type = 'Patient' AND id = ANY($1::text[])",
        [p["id"] for p in patients],
    )
    assert versions == 1200
