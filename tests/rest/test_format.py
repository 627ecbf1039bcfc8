"""Content negotiation, bodies and round-tripping the client's JSON."""

from __future__ import annotations

import json

FHIR_JSON = "application/fhir+json"


async def post_raw(client, path: str, body: bytes, content_type: str = FHIR_JSON, **headers: str):
    return await client.post(path, content=body, headers={"Content-Type": content_type, **headers})


async def test_decimal_precision_and_element_order_survive(client):
    body = (
        b'{"resourceType":"Observation","status":"final",'
        b'"code":{"text":"weight"},'
        b'"valueQuantity":{"value":1.50,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"},'
        b'"extension":[{"url":"http://example.org/precise","valueDecimal":0.010}],'
        b'"note":[{"text":"exact"}]}'
    )
    res = await post_raw(client, "/Observation", body)
    assert res.status_code == 201, res.text
    read = await client.get(f"/Observation/{res.json()['id']}")
    assert b'"value":1.50' in read.content
    assert b'"valueDecimal":0.010' in read.content
    keys = list(json.loads(read.content))
    assert keys == [
        "resourceType",
        "id",
        "meta",
        "status",
        "code",
        "valueQuantity",
        "extension",
        "note",
    ]


async def test_malformed_json_is_400(client):
    res = await post_raw(client, "/Patient", b'{"resourceType": "Patient",')
    assert res.status_code == 400
    assert res.json()["issue"][0]["code"] == "structure"


async def test_duplicate_keys_are_400(client):
    res = await post_raw(client, "/Patient", b'{"resourceType":"Patient","gender":"male","gender":"female"}')
    assert res.status_code == 400
    assert "duplicate" in res.json()["issue"][0]["diagnostics"]


async def test_json_array_body_is_400(client):
    assert (await post_raw(client, "/Patient", b"[1, 2]")).status_code == 400


async def test_empty_body_is_400(client):
    assert (await post_raw(client, "/Patient", b"")).status_code == 400


async def test_nan_is_400(client):
    res = await post_raw(client, "/Observation", b'{"resourceType":"Observation","valueDecimal":NaN}')
    assert res.status_code == 400


async def test_wrong_content_type_is_415(client):
    res = await post_raw(client, "/Patient", b'{"resourceType":"Patient"}', "text/plain")
    assert res.status_code == 415
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_plain_application_json_body_is_accepted(client):
    res = await post_raw(client, "/Patient", b'{"resourceType":"Patient"}', "application/json; charset=utf-8")
    assert res.status_code == 201


async def test_oversized_body_is_413(client, settings):
    big = b'{"resourceType":"Patient","name":[{"text":"' + b"x" * settings.max_body_bytes + b'"}]}'
    res = await post_raw(client, "/Patient", big)
    assert res.status_code == 413
    assert res.json()["issue"][0]["code"] == "too-costly"


async def test_accept_application_json_is_echoed(client):
    res = await client.get("/metadata", headers={"Accept": "application/json"})
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("application/json")


async def test_format_parameter_overrides_accept(client):
    res = await client.get("/metadata?_format=json", headers={"Accept": "text/html"})
    assert res.status_code == 200
    assert res.headers["content-type"].startswith(FHIR_JSON)


async def test_xml_is_406(client):
    assert (await client.get("/metadata", headers={"Accept": "application/fhir+xml"})).status_code == 406
    assert (await client.get("/metadata?_format=xml")).status_code == 406


async def test_unknown_accept_is_406(client):
    res = await client.get("/metadata", headers={"Accept": "text/html"})
    assert res.status_code == 406
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_wildcard_accept_gives_fhir_json(client):
    res = await client.get("/metadata", headers={"Accept": "text/html, */*;q=0.8"})
    assert res.headers["content-type"].startswith(FHIR_JSON)


async def test_path_outside_fhir_base_is_404_outcome(client):
    res = await client.get("http://testserver/elsewhere")
    assert res.status_code == 404
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_injection_strings_in_ids_are_harmless(client):
    for rid in ["1'; DROP TABLE resource; --", "%27%20OR%201=1", "../../etc/passwd"]:
        res = await client.get(f"/Patient/{rid}")
        assert res.status_code in (404, 400)
    assert (await client.get("/metadata")).status_code == 200
