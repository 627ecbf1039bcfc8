"""Every response has one `Date`, never earlier than its `Last-Modified` (RFC 9110 §8.8.2.1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

FHIR_JSON = "application/fhir+json"


async def test_every_response_has_one_date_header(client):
    for res in (await client.get("/metadata"), await client.get("/Patient/not-there")):
        assert len(res.headers.get_list("date")) == 1


async def test_date_is_not_earlier_than_last_modified_when_the_database_clock_is_ahead(client, db):
    created = await client.post("/Patient", json={"resourceType": "Patient"}, headers={"Content-Type": FHIR_JSON})
    rid = created.json()["id"]
    shift = "UPDATE resource SET last_updated = last_updated + $2::interval WHERE resource_type = 'Patient' AND id = $1"
    await db.execute(shift, rid, timedelta(hours=1))
    try:
        res = await client.get(f"/Patient/{rid}")
    finally:  # other tests search by _lastUpdated: leave no resource in the future
        await db.execute(shift, rid, timedelta(hours=-1))
    dates = res.headers.get_list("date")
    assert len(dates) == 1
    assert parsedate_to_datetime(dates[0]) >= parsedate_to_datetime(res.headers["last-modified"])
    assert parsedate_to_datetime(dates[0]) > datetime.now(UTC) + timedelta(minutes=59)
