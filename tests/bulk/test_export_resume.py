"""A job taken over from a claim that wrote past its last commit, and kept writing after
losing the job (a stalled node): the manifest still holds every resource exactly once.

The first claim is driven page by page (bulk/export_worker.py's ExportRun) so the crash
point is exact; the second claim runs as any node's worker would. The result is read
through the app: status, manifest, downloads.
"""

from __future__ import annotations

from typing import Any

import pytest

from headless_ehr.bulk import export_jobs
from headless_ehr.bulk.export_worker import ExportRun, LeaseLost
from tests.bulk.exporting import app_of, create, download, kick_off, wait


async def _expire_lease(pool: Any, job_id: str) -> None:
    await pool.execute(
        "UPDATE bulk_export_job SET lease_until = clock_timestamp() - interval '1 second' WHERE id = $1::uuid", job_id
    )


async def test_a_takeover_after_uncommitted_and_stale_writes_repeats_and_loses_no_line(node: Any):
    api = await node(bulk_export_jobs=False, bulk_page_rows=3, bulk_file_bytes=1000)
    ids = {await create(api, {"resourceType": "Patient", "gender": "female"}) for _ in range(20)}
    status_url = await kick_off(api, _type="Patient")
    app = app_of(api)
    pool, settings = app.state.bulk_pool, app.state.settings

    first = await export_jobs.claim(pool)
    assert first is not None
    stalled = ExportRun(pool, settings, first)
    stalled._resume_files()
    async with pool.acquire() as conn:
        for _ in range(3):  # committed: 9 resources, a part cut on the way
            assert await stalled._page(conn)
            await stalled._commit()
        assert await stalled._page(conn)  # written, never committed: the node "crashed" here
        stalled._close(durable=False)

    await _expire_lease(pool, first.id)
    second = await export_jobs.claim(pool)
    assert second is not None and second.lease_token != first.lease_token
    await ExportRun(pool, settings, second).run()

    async with pool.acquire() as conn:  # the stalled node wakes up and writes on
        stalled._file = None
        await stalled._page(conn)
        with pytest.raises(LeaseLost):
            await stalled._commit()
        stalled._close(durable=False)

    manifest = await wait(api, status_url)
    lines = await download(api, manifest)
    exported = [p["id"] for p in lines["Patient"]]
    assert len(exported) == len(ids) and set(exported) == ids
