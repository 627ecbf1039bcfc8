"""The store enforces the principal on every data path and keeps writes atomic."""

from __future__ import annotations

import pytest

from headless_ehr.auth.principal import SYSTEM, Principal
from headless_ehr.fhir.outcome import FhirError

READ_ONLY_PATIENTS = Principal.from_scopes("reader", "system/Patient.rs")


@pytest.fixture
def store(app):
    return app.state.store


async def _patient(store) -> str:
    outcome = await store.create(SYSTEM, {"resourceType": "Patient", "active": True})
    return outcome.stored.id


async def test_principal_without_write_rights_cannot_create(store):
    with pytest.raises(FhirError) as err:
        await store.create(READ_ONLY_PATIENTS, {"resourceType": "Patient"})
    assert err.value.status == 403


async def test_principal_cannot_read_other_types(store):
    obs = await store.create(SYSTEM, {"resourceType": "Basic", "code": {"text": "x"}})
    with pytest.raises(FhirError) as err:
        await store.read(READ_ONLY_PATIENTS, "Basic", obs.stored.id)
    assert err.value.status == 403


async def test_principal_check_covers_vread_history_search_update_delete(store):
    rid = await _patient(store)
    nobody = Principal.from_scopes("nobody", "")
    calls = [
        store.vread(nobody, "Patient", rid, "1"),
        store.history(nobody, "Patient", rid),
        store.history(nobody),
        store.search(nobody, "Patient", [("_id", rid)]),
        store.update(nobody, "Patient", rid, {"resourceType": "Patient", "id": rid}),
        store.delete(nobody, "Patient", rid),
    ]
    for call in calls:
        with pytest.raises(FhirError) as err:
            await call
        assert err.value.status == 403


async def test_write_rows_are_all_or_nothing(store, db):
    rid = await _patient(store)
    counts = await db.fetchrow(
        "SELECT (SELECT count(*) FROM resource_history WHERE id = $1) AS h,"
        " (SELECT count(*) FROM outbox WHERE id = $1) AS o",
        rid,
    )
    assert (counts["h"], counts["o"]) == (1, 1)
    await store.delete(SYSTEM, "Patient", rid)
    counts = await db.fetchrow(
        "SELECT (SELECT count(*) FROM resource_history WHERE id = $1) AS h,"
        " (SELECT count(*) FROM outbox WHERE id = $1) AS o,"
        " (SELECT count(*) FROM search_token WHERE resource_id = $1) AS t",
        rid,
    )
    assert (counts["h"], counts["o"], counts["t"]) == (2, 2, 0)


async def test_invalid_resource_writes_nothing(store, db):
    before = await db.fetchval("SELECT count(*) FROM resource_history")
    with pytest.raises(FhirError) as err:
        await store.create(SYSTEM, {"resourceType": "Patient", "gender": 42})
    assert err.value.status == 422
    assert await db.fetchval("SELECT count(*) FROM resource_history") == before


async def test_stored_bytes_are_what_read_returns(store):
    created = await store.create(SYSTEM, {"resourceType": "Patient", "active": False})
    read = await store.read(SYSTEM, "Patient", created.stored.id)
    assert read.content == created.stored.content
