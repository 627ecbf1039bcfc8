"""$export jobs across nodes on a database of their own: a job kicked off on one node
runs on another, as the snapshot of its kick-off; polling, cancelling, cutting, expiry."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from headless_ehr.bulk import export_files
from tests.bulk.exporting import ASYNC, app_of, create, download, kick_off, wait


async def test_writes_after_the_kick_off_are_not_in_the_export(node: Any):
    api = await node(bulk_export_jobs=False)  # accepts jobs, runs none
    changed = await create(api, {"resourceType": "Patient", "gender": "male"})
    removed = await create(api, {"resourceType": "Patient", "gender": "female"})
    status_url = await kick_off(api, _type="Patient")
    body = (await api.get(f"Patient/{changed}")).json() | {"gender": "other"}
    assert (await api.put(f"Patient/{changed}", json=body)).status_code == 200
    assert (await api.delete(f"Patient/{removed}")).status_code in (200, 204)
    await create(api, {"resourceType": "Patient", "gender": "unknown"})
    await node()  # a node that runs jobs
    lines = await download(api, await wait(api, status_url))
    assert sorted((p["id"], p["gender"]) for p in lines["Patient"]) == sorted([(changed, "male"), (removed, "female")])
    assert {p["meta"]["versionId"] for p in lines["Patient"]} == {"1"}


async def test_polling_sooner_than_retry_after_is_429(node: Any):
    api = await node(bulk_export_jobs=False)
    status_url = await kick_off(api, _type="Patient")
    first = await api.get(status_url)
    assert first.status_code == 202 and first.headers["X-Progress"] == "queued"
    too_soon = await api.get(status_url)
    assert too_soon.status_code == 429 and too_soon.headers["Retry-After"] == first.headers["Retry-After"]
    await asyncio.sleep(float(first.headers["Retry-After"]))
    assert (await api.get(status_url)).status_code == 202


async def test_delete_cancels_the_job_and_removes_its_files(node: Any):
    api = await node()
    await create(api, {"resourceType": "Patient"})
    status_url = await kick_off(api, _type="Patient")
    manifest = await wait(api, status_url)
    job_id = status_url.rsplit("=", 1)[1]
    folder = export_files.job_dir(app_of(api).state.settings.data_dir, job_id)
    assert folder.is_dir()
    assert (await api.delete(status_url)).status_code == 202
    assert not folder.exists()
    assert (await api.get(status_url)).status_code == 404
    assert (await api.get(manifest["output"][0]["url"])).status_code == 404


async def test_a_job_cancelled_before_it_ran_never_runs(node: Any):
    api = await node(bulk_export_jobs=False)
    await create(api, {"resourceType": "Patient"})
    status_url = await kick_off(api, _type="Patient")
    assert (await api.delete(status_url)).status_code == 202
    await node()
    await asyncio.sleep(1.5)
    job_id = status_url.rsplit("=", 1)[1]
    pool: asyncpg.Pool = app_of(api).state.pool
    status = await pool.fetchval("SELECT status FROM bulk_export_job WHERE id = $1::uuid", job_id)
    assert status in (None, "cancelled")  # gone once swept: a cancelled job expires at once
    assert not export_files.job_dir(app_of(api).state.settings.data_dir, job_id).exists()


async def test_files_are_cut_by_bytes(node: Any):
    api = await node(bulk_file_bytes=1500, bulk_page_rows=7)
    ids = [await create(api, {"resourceType": "Patient", "gender": "female"}) for _ in range(25)]
    manifest = await wait(api, await kick_off(api, _type="Patient"))
    assert len(manifest["output"]) >= 3  # about 9 lines of 160 bytes a file
    data_dir = app_of(api).state.settings.data_dir
    for item in manifest["output"]:
        name = item["url"].rsplit("file=", 1)[1]
        size = (
            (export_files.job_dir(data_dir, manifest["output"][0]["url"].split("_jobId=")[1].split("&")[0]) / name)
            .stat()
            .st_size
        )
        assert size <= 1500 or item["count"] == 1
    lines = await download(api, manifest)
    assert sorted(p["id"] for p in lines["Patient"]) == sorted(ids)


async def test_expired_jobs_and_their_files_are_removed(node: Any):
    api = await node()
    await create(api, {"resourceType": "Patient"})
    status_url = await kick_off(api, _type="Patient")
    await wait(api, status_url)
    job_id = status_url.rsplit("=", 1)[1]
    app = app_of(api)
    await app.state.pool.execute(
        "UPDATE bulk_export_job SET expires_at = now() - interval '1 second' WHERE id = $1::uuid", job_id
    )
    await app.state.exports.sweep()
    assert (await api.get(status_url)).status_code == 404
    assert not export_files.job_dir(app.state.settings.data_dir, job_id).exists()


async def test_a_finished_job_expires_after_the_retention(node: Any):
    api = await node(bulk_retention_hours=2)
    await create(api, {"resourceType": "Patient"})
    status_url = await kick_off(api, _type="Patient")
    await wait(api, status_url)
    hours = await app_of(api).state.pool.fetchval(
        "SELECT extract(epoch FROM expires_at - finished_at) / 3600 FROM bulk_export_job WHERE id = $1::uuid",
        status_url.rsplit("=", 1)[1],
    )
    assert round(hours) == 2
    res = await api.get(status_url)
    assert "Expires" in res.headers


async def test_a_job_that_cannot_run_fails_with_500_and_the_node_runs_the_next(node: Any):
    api = await node(bulk_export_jobs=False)
    await create(api, {"resourceType": "Patient"})
    broken = await kick_off(api, _type="Patient")
    await app_of(api).state.pool.execute(
        'UPDATE bulk_export_job SET caller = \'{"subject": "nobody"}\' WHERE id = $1::uuid', broken.rsplit("=", 1)[1]
    )
    fine = await kick_off(api, _type="Patient")
    await node()
    assert len((await download(api, await wait(api, fine)))["Patient"]) == 1
    res = await api.get(broken)
    assert res.status_code == 500
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_a_client_may_have_five_exports_open_at_once(node: Any):
    api = await node(bulk_export_jobs=False)
    open_jobs = [await kick_off(api, _type="Patient") for _ in range(5)]
    res = await api.get("$export", params={"_type": "Patient"}, headers=ASYNC)
    assert res.status_code == 429 and "Retry-After" in res.headers
    assert (await api.delete(open_jobs[0])).status_code == 202
    assert (await api.get("$export", params={"_type": "Patient"}, headers=ASYNC)).status_code == 202


async def test_a_job_cancelled_while_it_runs_stops_and_leaves_no_file(node: Any):
    api = await node(bulk_page_rows=1)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}] * 300,
    }
    assert (await api.post("", json=bundle)).status_code == 200
    status_url = await kick_off(api, _type="Patient")
    job_id = status_url.rsplit("=", 1)[1]
    app = app_of(api)
    for _ in range(500):  # until it has written something
        row = await app.state.pool.fetchrow(
            "SELECT status, (progress->>'written')::int FROM bulk_export_job WHERE id = $1::uuid", job_id
        )
        if row[1]:
            break
        await asyncio.sleep(0.01)
    assert (await api.delete(status_url)).status_code == 202
    assert row[0] == "running" and row[1] < 300  # cancelled mid-way
    await asyncio.sleep(1)  # the worker notices at its next commit
    assert (await api.get(status_url)).status_code == 404
    assert not export_files.job_dir(app.state.settings.data_dir, job_id).exists()
    assert app.state.exports.current is None
