"""A finished asynchronous request's answer is kept EHR_BULK_RETENTION_HOURS, then swept."""

from __future__ import annotations

from headless_ehr.bulk import async_jobs
from tests.rest.asyncflow import answer, kick_off


async def test_a_finished_request_is_kept_for_the_retention_hours(client, app, db):
    status_url = await kick_off(client, "GET", "/Patient", params={"_count": "1"})
    assert (await answer(client, status_url)).status_code == 200
    request_id = status_url.rsplit("=", 1)[1]
    hours = await db.fetchval(
        "SELECT extract(epoch FROM expires_at - finished_at) / 3600 FROM async_request WHERE id = $1::uuid", request_id
    )
    assert round(hours) == app.state.settings.bulk_retention_hours


async def test_a_request_past_its_expiry_is_swept_with_its_answer(client, db):
    status_url = await kick_off(client, "GET", "/Patient", params={"_count": "1"})
    assert (await answer(client, status_url)).status_code == 200
    request_id = status_url.rsplit("=", 1)[1]
    await db.execute(
        "UPDATE async_request SET expires_at = now() - interval '1 second' WHERE id = $1::uuid", request_id
    )
    assert request_id in await async_jobs.expired(db)  # what each node's worker runs every minute
    assert await db.fetchval("SELECT count(*) FROM async_result_chunk WHERE request_id = $1::uuid", request_id) == 0
    assert (await client.get(status_url)).status_code == 404
