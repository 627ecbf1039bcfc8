"""_summary and _elements on read and vread, with the SUBSETTED tag (R4 search.html#summary)."""

from __future__ import annotations

FHIR = {"Content-Type": "application/fhir+json"}
PATIENT = {
    "resourceType": "Patient",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Ann</div>'},
    "name": [{"family": "Summary", "given": ["Ann"]}],
    "gender": "female",
    "maritalStatus": {"text": "married"},
    "contact": [{"name": {"family": "Next"}}],
}


async def _patient(client) -> str:
    r = await client.post("/Patient", json=PATIENT, headers=FHIR)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _tags(resource: dict) -> set[str]:
    return {t["code"] for t in resource.get("meta", {}).get("tag", [])}


async def test_read_summary_true_keeps_only_summary_elements(client):
    rid = await _patient(client)
    body = (await client.get(f"/Patient/{rid}", params={"_summary": "true"})).json()
    assert body["name"] and body["gender"] == "female"
    assert "maritalStatus" not in body and "contact" not in body and "text" not in body
    assert "SUBSETTED" in _tags(body)


async def test_read_summary_text_keeps_text_and_mandatory_elements(client):
    rid = await _patient(client)
    body = (await client.get(f"/Patient/{rid}", params={"_summary": "text"})).json()
    assert set(body) == {"resourceType", "id", "meta", "text"}


async def test_read_summary_data_drops_the_narrative(client):
    rid = await _patient(client)
    body = (await client.get(f"/Patient/{rid}", params={"_summary": "data"})).json()
    assert "text" not in body and body["contact"]
    assert "SUBSETTED" in _tags(body)


async def test_read_summary_false_is_the_whole_resource(client):
    rid = await _patient(client)
    body = (await client.get(f"/Patient/{rid}", params={"_summary": "false"})).json()
    assert "contact" in body and "SUBSETTED" not in _tags(body)


async def test_read_elements_keeps_the_named_elements(client):
    rid = await _patient(client)
    body = (await client.get(f"/Patient/{rid}", params={"_elements": "gender,maritalStatus"})).json()
    assert set(body) == {"resourceType", "id", "meta", "gender", "maritalStatus"}
    assert "SUBSETTED" in _tags(body)


async def test_vread_honours_summary(client):
    rid = await _patient(client)
    body = (await client.get(f"/Patient/{rid}/_history/1", params={"_summary": "true"})).json()
    assert "contact" not in body and "SUBSETTED" in _tags(body)


async def test_read_summary_count_is_400(client):
    rid = await _patient(client)
    r = await client.get(f"/Patient/{rid}", params={"_summary": "count"})
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


async def test_subsetted_read_keeps_the_version_etag(client):
    rid = await _patient(client)
    r = await client.get(f"/Patient/{rid}", params={"_summary": "true"})
    assert r.headers["etag"] == 'W/"1"'
