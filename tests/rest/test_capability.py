"""GET /metadata tells the truth about what is implemented."""

from __future__ import annotations

from headless_ehr.fhir.definitions import definitions


async def test_metadata_is_an_r4_capability_statement(client):
    res = await client.get("/metadata")
    assert res.status_code == 200
    cs = res.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    assert cs["kind"] == "instance"


async def test_metadata_lists_every_r4_resource_type(client):
    cs = (await client.get("/metadata")).json()
    listed = {r["type"] for r in cs["rest"][0]["resource"]}
    assert listed == set(definitions().resource_types)
    assert len(listed) == 146


async def test_metadata_lists_the_interactions_that_work(client):
    cs = (await client.get("/metadata")).json()
    rest = cs["rest"][0]
    assert {"transaction", "batch", "history-system"} <= {i["code"] for i in rest["interaction"]}
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert {"read", "vread", "update", "patch", "delete", "create", "search-type"} <= {
        i["code"] for i in patient["interaction"]
    }


async def test_metadata_search_params_are_usable(client):
    cs = (await client.get("/metadata")).json()
    patient = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    names = {p["name"] for p in patient["searchParam"]}
    assert {"name", "birthdate", "identifier", "general-practitioner", "_id"} <= names
    for name in ("name", "birthdate", "identifier", "gender"):
        res = await client.get(f"/Patient?{name}=x", headers={"Prefer": "handling=strict"})
        assert res.status_code in (200, 400)
        if res.status_code == 400:  # only a bad value may be refused, never the parameter
            assert "unknown" not in res.text
