"""PATCH with JSON Patch and FHIRPath Patch, validated like any update."""

from __future__ import annotations

import base64
import json

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"


async def new_patient(client, **extra) -> dict:
    body = {"resourceType": "Patient", "name": [{"family": "Doe", "given": ["Jan"]}], **extra}
    return (await client.post("/Patient", json=body, headers={"Content-Type": FHIR_JSON})).json()


async def json_patch(client, url: str, ops: list, **headers: str):
    return await client.patch(url, content=json.dumps(ops), headers={"Content-Type": JSON_PATCH, **headers})


def operation(kind: str, path: str, **parts) -> dict:
    items = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    for name, value in parts.items():
        items.append({"name": name, **value})
    return {"name": "operation", "part": items}


async def fhirpath_patch(client, url: str, *ops: dict):
    body = {"resourceType": "Parameters", "parameter": list(ops)}
    return await client.patch(url, json=body, headers={"Content-Type": FHIR_JSON})


async def test_json_patch_replaces_and_bumps_version(client):
    p = await new_patient(client)
    res = await json_patch(client, f"/Patient/{p['id']}", [{"op": "add", "path": "/gender", "value": "female"}])
    assert res.status_code == 200, res.text
    assert res.json()["gender"] == "female"
    assert res.json()["meta"]["versionId"] == "2"
    history = (await client.get(f"/Patient/{p['id']}/_history")).json()
    assert history["entry"][0]["request"]["method"] == "PATCH"


async def test_json_patch_producing_invalid_resource_is_422(client):
    p = await new_patient(client)
    res = await json_patch(client, f"/Patient/{p['id']}", [{"op": "add", "path": "/gender", "value": "robot"}])
    assert res.status_code == 422
    assert (await client.get(f"/Patient/{p['id']}")).json()["meta"]["versionId"] == "1"


async def test_json_patch_failing_test_op_is_422(client):
    p = await new_patient(client)
    ops = [{"op": "test", "path": "/name/0/family", "value": "Smith"}, {"op": "remove", "path": "/name"}]
    assert (await json_patch(client, f"/Patient/{p['id']}", ops)).status_code == 422


async def test_json_patch_with_stale_if_match_is_412(client):
    p = await new_patient(client)
    ops = [{"op": "add", "path": "/active", "value": True}]
    assert (await json_patch(client, f"/Patient/{p['id']}", ops, **{"If-Match": 'W/"5"'})).status_code == 412


async def test_malformed_json_patch_is_400(client):
    p = await new_patient(client)
    res = await client.patch(f"/Patient/{p['id']}", content=b'{"op": "add"}', headers={"Content-Type": JSON_PATCH})
    assert res.status_code == 400


async def test_patch_may_not_change_id(client):
    p = await new_patient(client)
    res = await json_patch(client, f"/Patient/{p['id']}", [{"op": "replace", "path": "/id", "value": "other"}])
    assert res.status_code in (400, 422)


async def test_patch_of_unknown_resource_is_404(client):
    assert (await json_patch(client, "/Patient/nope", [])).status_code == 404


async def test_fhirpath_patch_add_replace_delete(client):
    p = await new_patient(client, birthDate="1980-01-01")
    res = await fhirpath_patch(
        client,
        f"/Patient/{p['id']}",
        operation("add", "Patient", name={"valueString": "gender"}, value={"valueCode": "male"}),
        operation("replace", "Patient.name[0].family", value={"valueString": "Smith"}),
        operation("delete", "Patient.birthDate"),
    )
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["gender"] == "male"
    assert body["name"][0]["family"] == "Smith"
    assert "birthDate" not in body


async def test_fhirpath_patch_insert_move_and_where(client):
    p = await new_patient(
        client,
        identifier=[{"system": "urn:a", "value": "1"}, {"system": "urn:b", "value": "2"}],
    )
    res = await fhirpath_patch(
        client,
        f"/Patient/{p['id']}",
        operation(
            "insert",
            "Patient.identifier",
            index={"valueInteger": 0},
            value={
                "name": "value",
                "part": [{"name": "system", "valueUri": "urn:c"}, {"name": "value", "valueString": "3"}],
            },
        ),
        operation("move", "Patient.identifier", source={"valueInteger": 0}, destination={"valueInteger": 2}),
        operation("replace", "Patient.identifier.where(system='urn:b').value", value={"valueString": "22"}),
    )
    assert res.status_code == 200, res.text
    assert [(i["system"], i["value"]) for i in res.json()["identifier"]] == [
        ("urn:a", "1"),
        ("urn:b", "22"),
        ("urn:c", "3"),
    ]


async def test_fhirpath_patch_path_matching_several_is_422(client):
    p = await new_patient(client, identifier=[{"value": "1"}, {"value": "2"}])
    res = await fhirpath_patch(
        client, f"/Patient/{p['id']}", operation("replace", "Patient.identifier.value", value={"valueString": "x"})
    )
    assert res.status_code == 422


async def test_patch_inside_transaction(client):
    p = await new_patient(client)
    ops = base64.b64encode(json.dumps([{"op": "add", "path": "/active", "value": True}]).encode()).decode()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Binary", "contentType": JSON_PATCH, "data": ops},
                "request": {"method": "PATCH", "url": f"Patient/{p['id']}"},
            },
        ],
    }
    res = await client.post("", json=bundle, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 200, res.text
    assert (await client.get(f"/Patient/{p['id']}")).json()["active"] is True
