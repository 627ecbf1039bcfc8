"""$validate checks a resource without storing it (R4 Resource-validate)."""

from __future__ import annotations

FHIR_JSON = "application/fhir+json"


async def validate(client, path: str, body: dict):
    return await client.post(path, json=body, headers={"Content-Type": FHIR_JSON})


async def test_valid_resource_gives_all_ok(client):
    res = await validate(client, "/Patient/$validate", {"resourceType": "Patient", "gender": "male"})
    assert res.status_code == 200
    issues = res.json()["issue"]
    assert [i["severity"] for i in issues] == ["information"]


async def test_invalid_resource_gives_errors_with_expression_and_stores_nothing(client, db):
    before = await db.fetchval("SELECT count(*) FROM resource_history")
    res = await validate(client, "/Patient/$validate", {"resourceType": "Patient", "gender": "robot"})
    assert res.status_code == 200
    errors = [i for i in res.json()["issue"] if i["severity"] == "error"]
    assert errors and errors[0]["expression"] == ["Patient.gender"]
    assert await db.fetchval("SELECT count(*) FROM resource_history") == before


async def test_parameters_wrapper_is_unwrapped(client):
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "resource",
                "resource": {"resourceType": "Patient", "birthDate": "1999-13-01"},
            },
            {"name": "mode", "valueCode": "create"},
        ],
    }
    res = await validate(client, "/Patient/$validate", body)
    errors = [i for i in res.json()["issue"] if i["severity"] == "error"]
    assert errors and errors[0]["expression"] == ["Patient.birthDate"]


async def test_wrong_type_for_the_url_is_reported(client):
    res = await validate(client, "/Observation/$validate", {"resourceType": "Patient"})
    assert res.status_code == 200
    assert res.json()["issue"][0]["severity"] == "error"


async def test_instance_validate_checks_the_id(client):
    res = await validate(client, "/Patient/abc/$validate", {"resourceType": "Patient", "id": "xyz"})
    errors = [i for i in res.json()["issue"] if i["severity"] == "error"]
    assert errors and errors[0]["expression"] == ["id"]


async def test_unknown_mode_is_400(client):
    res = await client.post(
        "/Patient/$validate?mode=explode",
        json={"resourceType": "Patient"},
        headers={"Content-Type": FHIR_JSON},
    )
    assert res.status_code == 400


async def test_unknown_operation_is_404(client):
    res = await validate(client, "/Patient/$frobnicate", {"resourceType": "Patient"})
    assert res.status_code == 404
    assert res.json()["issue"][0]["code"] == "not-supported"
