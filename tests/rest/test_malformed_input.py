"""Malformed input is a 4xx with an OperationOutcome, never a 500 (each case once crashed or misread)."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def assert_outcome(res: httpx.Response, status: int) -> dict:
    assert res.status_code == status, res.text[:500]
    outcome = res.json()
    assert outcome["resourceType"] == "OperationOutcome"
    return outcome


def cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


async def new_patient(client: httpx.AsyncClient, **elements: object) -> str:
    rid = uuid.uuid4().hex
    body = {"resourceType": "Patient", "id": rid, **elements}
    assert (await client.put(f"/Patient/{rid}", json=body, headers=FHIR_JSON)).status_code == 201
    return rid


# non-ASCII digits: str.isdigit() accepts '²' (int() fails) and '١٢' (int() reads 12)


@pytest.mark.parametrize("count", ["²", "\u0661\u0662", "12x", "-1", "", " 1"])
async def test_search_count_must_be_ascii_digits(client, count):
    assert_outcome(await client.get("/Patient", params={"_count": count}), 400)


@pytest.mark.parametrize("count", ["²", "\u0661\u0662"])
async def test_history_count_must_be_ascii_digits(client, count):
    rid = await new_patient(client)
    assert_outcome(await client.get(f"/Patient/{rid}/_history", params={"_count": count}), 400)
    assert_outcome(await client.get("/_history", params={"_count": count}), 400)


async def test_huge_count_is_capped_not_an_error(client):
    rid = await new_patient(client)
    assert (await client.get("/Patient", params={"_count": "9" * 5000})).status_code == 200
    assert (await client.get(f"/Patient/{rid}/_history", params={"_count": "9" * 5000})).status_code == 200


@pytest.mark.parametrize("version", ["²", "\u0661"])
async def test_version_id_with_non_ascii_digits_is_not_found(client, version):
    rid = await new_patient(client)
    assert_outcome(await client.get(f"/Patient/{rid}/_history/{version}"), 404)


async def test_content_length_with_non_ascii_digits_is_400(client):
    headers = [(b"content-type", b"application/fhir+json"), (b"content-length", "²".encode("latin-1"))]
    request = client.build_request("POST", "/Patient", content=b'{"resourceType":"Patient"}')
    request.headers = httpx.Headers(headers)
    assert_outcome(await client.send(request), 400)


# multi-type sort (R4 search.html#all)


async def test_sort_on_a_parameter_missing_in_one_type_is_400(client):
    res = await client.get("/", params={"_type": "Patient,Observation", "_sort": "birthdate"})
    outcome = assert_outcome(res, 400)
    assert "Observation" in outcome["issue"][0]["diagnostics"]


async def test_sort_on_a_parameter_every_type_has_is_allowed(client):
    res = await client.get("/", params={"_type": "Patient,Observation", "_sort": "-_lastUpdated"})
    assert res.status_code == 200


# paging cursors


@pytest.mark.parametrize(
    "value",
    [
        "not base64!!",
        "e30",  # {}
        cursor([1, 2]),
        cursor({"k": "x"}),
        cursor({"k": [1]}),  # one key for the id, but not a string
        cursor({"k": [["nested"], "id"]}),
        cursor({"k": [{"a": 1}, "id"]}),
        cursor({"k": [7, "id"]}),
    ],
)
async def test_search_cursor_of_the_wrong_shape_is_400(client, value):
    for sort in ("birthdate", "family", "_id"):
        assert_outcome(await client.get("/Patient", params={"_sort": sort, "_cursor": value}), 400)


@pytest.mark.parametrize(
    "path,sort,key",
    [
        ("/RiskAssessment", "probability", "1e999999999"),
        ("/RiskAssessment", "probability", "NaN"),
        ("/RiskAssessment", "probability", "seven"),
        ("/Patient", "birthdate", "2020-01-01T00:00:00"),  # no time zone
        ("/Patient", "birthdate", "yesterday"),
    ],
)
async def test_search_cursor_value_of_the_wrong_kind_is_400(client, path, sort, key):
    assert_outcome(await client.get(path, params={"_sort": sort, "_cursor": cursor({"k": [key, "id"]})}), 400)


async def test_cursor_of_another_search_is_400(client):
    for _ in range(3):
        await new_patient(client, birthDate="2000-01-01", name=[{"family": "Cursorson"}])
    page = (await client.get("/Patient", params={"_sort": "birthdate,family", "_count": "1"})).json()
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    other_cursor = httpx.URL(next_url).params["_cursor"]
    assert_outcome(await client.get("/Patient", params={"_sort": "family", "_cursor": other_cursor}), 400)
    assert_outcome(await client.get("/Patient/_history", params={"_cursor": other_cursor}), 400)


@pytest.mark.parametrize(
    "value",
    [
        "%%%",
        cursor({"a": 1}),
        cursor(["x", 1]),
        cursor(["2020-01-01T00:00:00+00:00", 10**30]),
        cursor(["2020-01-01T00:00:00+00:00", "1"]),
        cursor(["2020-01-01T00:00:00", 1]),
        cursor(["2020-01-01T00:00:00+00:00", -1]),
    ],
)
async def test_history_cursor_of_the_wrong_shape_is_400(client, value):
    assert_outcome(await client.get("/Patient/_history", params={"_cursor": value}), 400)


# decimals beyond any representable range


@pytest.mark.parametrize("value", ["1e999999999", "-1e-999999999", "gt1e999999999", "ap1e-999999999", "1e309"])
async def test_search_number_out_of_range_is_400(client, value):
    assert_outcome(await client.get("/Observation", params={"value-quantity": value}), 400)
    assert_outcome(await client.get("/RiskAssessment", params={"probability": value}), 400)


async def test_search_composite_number_out_of_range_is_400(client):
    params = {"component-code-value-quantity": "http://loinc.org|8480-6$1e999999999"}
    assert_outcome(await client.get("/Observation", params=params), 400)


@pytest.mark.parametrize("value", ["\u0661\u0662", "1e5x", "0x10"])
async def test_search_number_with_foreign_digits_is_400(client, value):
    assert_outcome(await client.get("/Observation", params={"value-quantity": value}), 400)


async def test_search_number_within_range_works(client):
    for value in ("1e308", "-1e-300", "ap0", "1" * 300):
        assert (await client.get("/Observation", params={"value-quantity": value})).status_code == 200


def observation_with(value: str) -> bytes:
    return (
        '{"resourceType":"Observation","status":"final","code":{"text":"x"},'
        f'"valueQuantity":{{"value":{value},"unit":"mg"}}}}'
    ).encode()


@pytest.mark.parametrize("value", ["1e999999999", "-1e-999999999", "0e999999999", "1e400", "1." + "0" * 5000 + "1"])
async def test_resource_decimal_out_of_range_is_422(client, value):
    outcome = assert_outcome(await client.post("/Observation", content=observation_with(value), headers=FHIR_JSON), 422)
    assert outcome["issue"][0]["expression"] == ["Observation.value.ofType(Quantity).value"]


async def test_value_decimal_out_of_range_is_422(client):
    body = (
        b'{"resourceType":"Basic","code":{"text":"x"},"extension":[{"url":"http://e.org/x","valueDecimal":1e999999}]}'
    )
    assert_outcome(await client.post("/Basic", content=body, headers=FHIR_JSON), 422)


async def test_large_decimal_within_range_is_stored_verbatim(client):
    res = await client.post("/Observation", content=observation_with("1.5e300"), headers=FHIR_JSON)
    assert res.status_code == 201
    assert b'"value":1.5e300' in (await client.get(f"/Observation/{res.json()['id']}")).content


# nesting deep enough to break serialisation


def nested_extensions(depth: int) -> bytes:
    inner = '{"url":"http://e.org/x","valueString":"v"}'
    for _ in range(depth):
        inner = f'{{"url":"http://e.org/x","extension":[{inner}]}}'
    return f'{{"resourceType":"Patient","extension":[{inner}]}}'.encode()


@pytest.mark.parametrize("depth", [150, 400, 10_000])
async def test_deeply_nested_extensions_are_refused(client, depth):
    res = await client.post("/Patient", content=nested_extensions(depth), headers=FHIR_JSON)
    assert 400 <= res.status_code < 500
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_deepest_accepted_nesting_is_served_in_a_bundle(client):
    res = await client.post("/Patient", content=nested_extensions(97), headers=FHIR_JSON)
    assert res.status_code == 201, res.text[:300]
    rid = res.json()["id"]
    assert (await client.get("/Patient", params={"_id": rid})).status_code == 200
    assert (await client.get(f"/Patient/{rid}/_history")).status_code == 200


async def test_deep_nesting_in_a_transaction_is_refused(client):
    resource = json.loads(nested_extensions(150))
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": resource, "request": {"method": "POST", "url": "Patient"}}],
    }
    res = await client.post("", json=bundle, headers=FHIR_JSON)
    assert 400 <= res.status_code < 500


# If-Match / If-None-Match (RFC 9110 §13.1)


async def test_if_match_star_updates_an_existing_resource(client):
    rid = await new_patient(client)
    body = {"resourceType": "Patient", "id": rid, "active": True}
    res = await client.put(f"/Patient/{rid}", json=body, headers={**FHIR_JSON, "If-Match": "*"})
    assert res.status_code == 200 and res.json()["meta"]["versionId"] == "2"


async def test_if_match_star_on_a_missing_resource_is_412(client):
    rid = uuid.uuid4().hex
    res = await client.put(
        f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid}, headers={**FHIR_JSON, "If-Match": "*"}
    )
    assert_outcome(res, 412)
    assert (await client.get(f"/Patient/{rid}")).status_code == 404


async def test_if_match_star_on_a_deleted_resource_is_412(client):
    rid = await new_patient(client)
    await client.delete(f"/Patient/{rid}")
    res = await client.put(
        f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid}, headers={**FHIR_JSON, "If-Match": "*"}
    )
    assert_outcome(res, 412)


async def test_if_match_list_matches_any_member(client):
    rid = await new_patient(client)
    body = {"resourceType": "Patient", "id": rid, "active": True}
    res = await client.put(f"/Patient/{rid}", json=body, headers={**FHIR_JSON, "If-Match": 'W/"7", W/"1"'})
    assert res.status_code == 200
    res = await client.put(f"/Patient/{rid}", json=body, headers={**FHIR_JSON, "If-Match": 'W/"1", W/"3"'})
    assert_outcome(res, 412)


async def test_if_match_on_delete_and_patch_takes_lists_and_star(client):
    rid = await new_patient(client)
    patch = [{"op": "add", "path": "/active", "value": True}]
    headers = {"Content-Type": "application/json-patch+json", "If-Match": 'W/"9", W/"1"'}
    assert (await client.patch(f"/Patient/{rid}", json=patch, headers=headers)).status_code == 200
    assert (await client.delete(f"/Patient/{rid}", headers={"If-Match": "*"})).status_code in (200, 204)


@pytest.mark.parametrize("value", ['W/"x"', "W/", 'W/"1" W/"2"', ",", 'W/"12345678901234567890"'])
async def test_malformed_if_match_is_400(client, value):
    rid = await new_patient(client)
    res = await client.put(
        f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid}, headers={**FHIR_JSON, "If-Match": value}
    )
    assert_outcome(res, 400)


async def test_if_match_with_non_ascii_digits_is_400(client):
    rid = await new_patient(client)
    for value in ('W/"²"', 'W/"\u0661"'):
        request = client.build_request("PUT", f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid})
        request.headers = httpx.Headers(
            [(b"content-type", b"application/fhir+json"), (b"if-match", value.encode("utf-8"))]
        )
        assert_outcome(await client.send(request), 400)


async def test_if_match_of_a_version_that_cannot_exist_is_412(client):
    rid = await new_patient(client)
    res = await client.put(
        f"/Patient/{rid}",
        json={"resourceType": "Patient", "id": rid},
        headers={**FHIR_JSON, "If-Match": 'W/"99999999999"'},
    )
    assert_outcome(res, 412)


async def test_if_none_match_list_gives_304_when_any_member_matches(client):
    rid = await new_patient(client)
    assert (await client.get(f"/Patient/{rid}", headers={"If-None-Match": 'W/"7", W/"1"'})).status_code == 304
    assert (await client.get(f"/Patient/{rid}", headers={"If-None-Match": 'W/"7", W/"8"'})).status_code == 200
    assert (await client.get(f"/Patient/{rid}", headers={"If-None-Match": "*"})).status_code == 304


async def test_unreadable_if_none_match_is_ignored_on_read(client):
    rid = await new_patient(client)
    assert (await client.get(f"/Patient/{rid}", headers={"If-None-Match": "garbage"})).status_code == 200


async def test_transaction_if_match_uses_the_same_rules(client):
    rid = await new_patient(client)

    def bundle(if_match: object) -> dict:
        request = {"method": "PUT", "url": f"Patient/{rid}", "ifMatch": if_match}
        entry = {"resource": {"resourceType": "Patient", "id": rid, "active": True}, "request": request}
        return {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}

    for bad in ('W/"²"', 'W/"1" junk 2', 12):
        res = await client.post("", json=bundle(bad), headers=FHIR_JSON)
        assert 400 <= res.status_code < 500, bad
    assert (await client.post("", json=bundle('W/"5", W/"1"'), headers=FHIR_JSON)).status_code == 200
    assert (await client.post("", json=bundle("*"), headers=FHIR_JSON)).status_code == 200


# ids no resource can have (PostgreSQL refuses a NUL in text)


@pytest.mark.parametrize(
    "path", ["/Patient/a%00b", "/Patient/a%00b/_history", "/Patient/a%00b/_history/1", "/Patient/a%00b/*"]
)
async def test_id_with_nul_is_404(client, path):
    assert_outcome(await client.get(path), 404)


async def test_put_with_invalid_id_is_422(client):
    res = await client.put("/Patient/a%00b", json={"resourceType": "Patient", "id": "a\x00b"}, headers=FHIR_JSON)
    assert_outcome(res, 422)
    res = await client.put("/Patient/a%00b", json={"resourceType": "Patient", "id": "ab"}, headers=FHIR_JSON)
    assert_outcome(res, 400)


@pytest.mark.parametrize("url", ["Patient/a\\u0000b", "Patient/a\\u0000b/_history/1"])
async def test_bundle_read_of_an_id_with_nul_is_404(client, url):
    body = f'{{"resourceType":"Bundle","type":"batch","entry":[{{"request":{{"method":"GET","url":"{url}"}}}}]}}'
    res = await client.post("", content=body.encode(), headers=FHIR_JSON)
    assert res.status_code == 200
    assert res.json()["entry"][0]["response"]["status"].startswith("404")


# UCUM units: a unit the table cannot read is kept uncanonicalised, never a crash


@pytest.mark.parametrize(
    "unit",
    ["m" + "9" * 5000, "(" * 3000 + "m" + ")" * 3000, "m4" + "0" * 400, "\u0661"],
    ids=["long-exponent", "deep-parentheses", "huge-exponent", "arabic-digit"],
)
async def test_unreadable_ucum_unit_is_stored_and_searchable(client, unit):
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "valueQuantity": {"value": 1, "system": "http://unitsofmeasure.org", "code": unit},
    }
    assert (await client.post("/Observation", json=body, headers=FHIR_JSON)).status_code == 201
    params = {"value-quantity": f"1|http://unitsofmeasure.org|{unit}"}
    assert (await client.get("/Observation", params=params)).status_code == 200
