"""Upgrading: Binaries and Bundles stored before patient isolation lack the index rows
that hide them from other patients; migration 0016 queues a reindex of both types that
the next node to start runs, with its own public base."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg
import httpx

from headless_ehr.app import create_app
from headless_ehr.search.registry import SECURITY_CONTEXT
from tests.conftest import bearer, mint_token

JOB = "upgrade-0016-binary-bundle"


async def _started(settings) -> tuple[object, object]:
    application = create_app(settings)
    lifespan = application.router.lifespan_context(application)
    await lifespan.__aenter__()
    return application, lifespan


async def test_a_binary_stored_before_isolation_is_hidden_once_the_upgrade_reindex_ran(
    settings, fresh_database, tmp_path
):
    # its own data dir too: the first start on a new database writes that database's admin
    # client into it, which in the shared one would lock the suite out of the admin API
    own = dataclasses.replace(settings, database_url=fresh_database, data_dir=tmp_path)
    first, lifespan = await _started(own)
    try:
        system = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=first),
            base_url="http://testserver/fhir",
            headers=bearer(mint_token(first)),
        )
        async with system:
            b = (await system.post("/Patient", json={"resourceType": "Patient"})).json()["id"]
            a = (await system.post("/Patient", json={"resourceType": "Patient"})).json()["id"]
            binary = {"resourceType": "Binary", "contentType": "text/plain", "data": "c2VjcmV0"}
            binary["securityContext"] = {"reference": f"Patient/{b}"}
            bid = (await system.post("/Binary", json=binary)).json()["id"]
    finally:
        await lifespan.__aexit__(None, None, None)

    db = await asyncpg.connect(fresh_database)
    try:  # as a release before isolation left it: no security-context rows; the job queued as 0016 does
        await db.execute("DELETE FROM search_reference WHERE resource_type = 'Binary' AND param = $1", SECURITY_CONTEXT)
        await db.execute("DELETE FROM job WHERE id = $1", JOB)
        await db.execute(
            "INSERT INTO job (id, kind, status, params, updated_at) VALUES ($1, 'reindex', 'running',"
            ' \'{"types": ["Binary", "Bundle"], "base": null, "upgrade": true}\', \'epoch\')',
            JOB,
        )
    finally:
        await db.close()

    second, lifespan = await _started(own)
    try:
        patient_a = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=second),
            base_url="http://testserver/fhir",
            headers=bearer(mint_token(second, "patient/*.rs", patient=a)),
        )
        async with patient_a:
            for _ in range(100):
                status = await second.state.pool.fetchval("SELECT status FROM job WHERE id = $1", JOB)
                if status == "completed":
                    break
                await asyncio.sleep(0.1)
            assert status == "completed"
            assert (await patient_a.get(f"/Binary/{bid}")).status_code == 404
            assert bid not in (await patient_a.get("/Binary")).text
    finally:
        await lifespan.__aexit__(None, None, None)
