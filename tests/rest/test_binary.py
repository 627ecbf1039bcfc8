"""Binary over REST as R4 binary.html#rest says: raw content in and out, FHIR when asked for."""

from __future__ import annotations

import base64

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
FHIR = {"Content-Type": "application/fhir+json"}


async def _binary(client, content_type: str = "image/png", data: bytes = PNG, context: str | None = None) -> str:
    resource = {"resourceType": "Binary", "contentType": content_type, "data": base64.b64encode(data).decode()}
    if context:
        resource["securityContext"] = {"reference": context}
    r = await client.post("/Binary", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def test_read_with_a_non_fhir_accept_returns_the_raw_content(client):
    rid = await _binary(client)
    r = await client.get(f"/Binary/{rid}", headers={"Accept": "image/png"})
    assert r.status_code == 200
    assert r.content == PNG
    assert r.headers["content-type"] == "image/png"
    assert r.headers["etag"] == 'W/"1"'


async def test_read_with_a_fhir_accept_returns_the_resource(client):
    rid = await _binary(client)
    r = await client.get(f"/Binary/{rid}", headers={"Accept": "application/fhir+json"})
    assert r.json()["resourceType"] == "Binary"


async def test_read_with_a_wildcard_accept_returns_the_resource(client):
    rid = await _binary(client)
    r = await client.get(f"/Binary/{rid}", headers={"Accept": "*/*"})
    assert r.json()["resourceType"] == "Binary"


async def test_read_with_format_returns_the_resource_whatever_the_accept(client):
    rid = await _binary(client)
    r = await client.get(f"/Binary/{rid}", params={"_format": "json"}, headers={"Accept": "image/png"})
    assert r.json()["resourceType"] == "Binary"


async def test_a_browser_accept_gets_the_raw_content(client):
    rid = await _binary(client, "application/pdf", b"%PDF-1.4 hello")
    accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    r = await client.get(f"/Binary/{rid}", headers={"Accept": accept})
    assert r.content == b"%PDF-1.4 hello"
    assert r.headers["content-type"] == "application/pdf"


async def test_raw_read_carries_the_security_context(client):
    rid = await _binary(client, context="Patient/example")
    r = await client.get(f"/Binary/{rid}", headers={"Accept": "image/png"})
    assert r.headers["x-security-context"] == "Patient/example"


async def test_vread_with_a_non_fhir_accept_returns_the_raw_content(client):
    rid = await _binary(client)
    r = await client.get(f"/Binary/{rid}/_history/1", headers={"Accept": "application/octet-stream"})
    assert r.content == PNG


async def test_raw_read_of_a_missing_binary_is_404_not_406(client):
    r = await client.get("/Binary/does-not-exist", headers={"Accept": "image/png"})
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


async def test_a_non_fhir_accept_on_other_types_is_still_406(client):
    r = await client.get("/Patient/whatever", headers={"Accept": "image/png"})
    assert r.status_code == 406


async def test_post_with_a_non_fhir_content_type_stores_the_body_as_a_binary(client):
    r = await client.post("/Binary", content=PNG, headers={"Content-Type": "image/png", "Accept": FHIR["Content-Type"]})
    assert r.status_code == 201, r.text
    stored = r.json()
    assert stored["contentType"] == "image/png"
    assert base64.b64decode(stored["data"]) == PNG
    assert "/Binary/" in r.headers["location"]
    raw = await client.get(f"/Binary/{stored['id']}", headers={"Accept": "image/png"})
    assert raw.content == PNG


async def test_post_of_raw_content_takes_the_security_context_header(client):
    headers = {"Content-Type": "text/plain; charset=utf-8", "X-Security-Context": "Patient/p1"}
    r = await client.post("/Binary", content=b"hello", headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["securityContext"] == {"reference": "Patient/p1"}
    assert r.json()["contentType"] == "text/plain; charset=utf-8"


async def test_put_with_a_non_fhir_content_type_replaces_the_content(client):
    rid = await _binary(client)
    r = await client.put(f"/Binary/{rid}", content=b"%PDF-1.7", headers={"Content-Type": "application/pdf"})
    assert r.status_code == 200, r.text
    raw = await client.get(f"/Binary/{rid}", headers={"Accept": "application/pdf"})
    assert (raw.content, raw.headers["content-type"]) == (b"%PDF-1.7", "application/pdf")


async def test_raw_content_to_other_types_is_still_415(client):
    r = await client.post("/Patient", content=b"x", headers={"Content-Type": "image/png"})
    assert r.status_code == 415


async def test_raw_read_of_a_binary_without_data_is_empty_with_its_content_type(client):
    r = await client.post("/Binary", json={"resourceType": "Binary", "contentType": "text/plain"}, headers=FHIR)
    assert r.status_code == 201, r.text
    raw = await client.get(f"/Binary/{r.json()['id']}", headers={"Accept": "text/plain"})
    assert raw.status_code == 200
    assert raw.content == b"" and raw.headers["content-type"].startswith("text/plain")
