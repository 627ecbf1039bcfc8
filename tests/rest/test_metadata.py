"""GET /metadata as a cacheable resource: validators, conditional GET, _summary/_elements, in bundles."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

SUBSETTED = "SUBSETTED"


async def test_metadata_has_an_etag_and_last_modified(client):
    r = await client.get("/metadata")
    assert r.headers["etag"].startswith('W/"')
    assert parsedate_to_datetime(r.headers["last-modified"]).tzinfo is not None


async def test_metadata_validators_are_stable_between_requests(client):
    first, second = await client.get("/metadata"), await client.get("/metadata")
    assert first.headers["etag"] == second.headers["etag"]
    assert first.headers["last-modified"] == second.headers["last-modified"]
    assert first.content == second.content


async def test_metadata_if_none_match_with_the_current_etag_is_304(client):
    etag = (await client.get("/metadata")).headers["etag"]
    r = await client.get("/metadata", headers={"If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == etag


async def test_metadata_if_none_match_with_another_etag_is_200(client):
    r = await client.get("/metadata", headers={"If-None-Match": 'W/"stale"'})
    assert r.status_code == 200


async def test_metadata_if_modified_since_last_modified_is_304(client):
    modified = (await client.get("/metadata")).headers["last-modified"]
    r = await client.get("/metadata", headers={"If-Modified-Since": modified})
    assert r.status_code == 304


async def test_metadata_summary_true_drops_non_summary_elements_in_backbones(client):
    cs = (await client.get("/metadata", params={"_summary": "true"})).json()
    patient = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    assert "searchParam" not in patient and "interaction" not in patient
    assert cs["fhirVersion"] == "4.0.1"
    assert SUBSETTED in {t["code"] for t in cs["meta"]["tag"]}


async def test_metadata_elements_keeps_the_named_and_mandatory_elements(client):
    cs = (await client.get("/metadata", params={"_elements": "software"})).json()
    assert "software" in cs and "rest" not in cs
    assert {"status", "date", "kind", "fhirVersion", "format"} <= set(cs)
    assert SUBSETTED in {t["code"] for t in cs["meta"]["tag"]}


async def test_metadata_unknown_summary_value_is_400(client):
    r = await client.get("/metadata", params={"_summary": "count"})
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


async def test_metadata_terminology_mode_is_refused(client):
    r = await client.get("/metadata", params={"mode": "terminology"})
    assert r.status_code == 400


async def test_metadata_normal_mode_is_the_statement(client):
    r = await client.get("/metadata", params={"mode": "normal"})
    assert r.json()["resourceType"] == "CapabilityStatement"


def _bundle(kind: str) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": [{"request": {"method": "GET", "url": "metadata"}}]}


async def test_batch_get_metadata_returns_the_capability_statement(client):
    r = await client.post("/", json=_bundle("batch"), headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    entry = r.json()["entry"][0]
    assert entry["response"]["status"].startswith("200")
    assert entry["resource"]["resourceType"] == "CapabilityStatement"


async def test_transaction_get_metadata_returns_the_capability_statement(client):
    r = await client.post("/", json=_bundle("transaction"), headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["resource"]["resourceType"] == "CapabilityStatement"
