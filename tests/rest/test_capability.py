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


async def test_metadata_does_not_claim_patch_or_transactions(client):
    cs = (await client.get("/metadata")).json()
    rest = cs["rest"][0]
    assert all("patch" not in {i["code"] for i in r["interaction"]} for r in rest["resource"])
    assert "transaction" not in {i["code"] for i in rest["interaction"]}
