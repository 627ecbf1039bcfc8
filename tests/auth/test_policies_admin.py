"""Access policies through the admin API: stored, versioned, validated, assigned."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from headless_ehr.auth.bootstrap import admin_client_file
from tests.conftest import bearer, mint_token


def name(prefix: str = "policy") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ward_nurse(policy_name: str) -> dict[str, Any]:
    return {
        "name": policy_name,
        "rules": [
            {
                "resourceType": "Patient",
                "interactions": ["read", "search"],
                "criteria": "general-practitioner=%fhirUser",
            },
            {
                "resourceType": "Observation",
                "interactions": ["read", "search", "create"],
                "criteria": "category=vital-signs",
                "hiddenElements": ["note"],
                "readonlyElements": ["status"],
            },
            {
                "resourceType": "*",
                "interactions": ["read", "search"],
                "compartment": "Patient?general-practitioner=%fhirUser",
            },
        ],
    }


@pytest.fixture
async def admin(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the admin API holding the bootstrap admin client's token."""
    client_id = orjson.loads(admin_client_file(app.state.settings.data_dir).read_bytes())["client_id"]
    headers = bearer(mint_token(app, "system/*.*", client_id=client_id, subject=client_id))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver/admin", headers=headers) as c:
        yield c


async def test_a_policy_is_created_and_read_back_with_version_1(admin):
    policy = name()
    res = await admin.post("/policies", json=ward_nurse(policy))
    assert res.status_code == 201, res.text
    assert res.headers["location"] == f"/admin/policies/{policy}"
    got = (await admin.get(f"/policies/{policy}")).json()
    assert got["version"] == 1 and got["rules"] == ward_nurse(policy)["rules"]


async def test_each_put_stores_a_new_version_and_old_versions_stay_readable(admin):
    policy = name()
    await admin.post("/policies", json=ward_nurse(policy))
    changed = {"name": policy, "rules": [{"resourceType": "Patient", "interactions": ["read"]}]}
    res = await admin.put(f"/policies/{policy}", json=changed)
    assert res.status_code == 200 and res.json()["version"] == 2
    assert (await admin.get(f"/policies/{policy}")).json()["rules"] == changed["rules"]
    assert (await admin.get(f"/policies/{policy}", params={"version": "1"})).json()["rules"][0]["criteria"]


async def test_a_list_shows_the_newest_version_of_each_policy(admin):
    policy = name()
    await admin.post("/policies", json=ward_nurse(policy))
    await admin.put(f"/policies/{policy}", json={"rules": []})
    listed = {p["name"]: p for p in (await admin.get("/policies")).json()["policies"]}
    assert listed[policy]["version"] == 2


async def test_creating_a_policy_twice_is_409(admin):
    policy = name()
    await admin.post("/policies", json=ward_nurse(policy))
    assert (await admin.post("/policies", json=ward_nurse(policy))).status_code == 409


async def test_put_of_an_unknown_policy_is_404(admin):
    assert (await admin.put(f"/policies/{name()}", json={"rules": []})).status_code == 404


async def test_delete_removes_the_policy(admin):
    policy = name()
    await admin.post("/policies", json=ward_nurse(policy))
    assert (await admin.delete(f"/policies/{policy}")).status_code == 204
    assert (await admin.get(f"/policies/{policy}")).status_code == 404


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"resourceType": "Observaton", "interactions": ["read"]}, "resourceType"),
        ({"resourceType": "Observation", "interactions": ["look"]}, "unknown interaction 'look'"),
        ({"resourceType": "Observation", "interactions": []}, "interactions"),
        ({"resourceType": "Observation", "interactions": ["read"], "criteria": "colour=red"}, "colour"),
        ({"resourceType": "Observation", "interactions": ["read"], "criteria": "_count=1"}, "_count"),
        ({"resourceType": "*", "interactions": ["read"], "criteria": "code=x"}, "needs a resourceType"),
        ({"resourceType": "*", "interactions": ["read"], "compartment": "Encounter?status=x"}, "Patient?"),
        ({"resourceType": "*", "interactions": ["read"], "compartment": "Patient?colour=red"}, "colour"),
        ({"resourceType": "Observation", "interactions": ["read"], "hiddenElements": "note"}, "hiddenElements"),
        ({"resourceType": "Observation", "interactions": ["read"], "readonly": ["status"]}, "unknown field"),
    ],
)
async def test_a_policy_breaking_the_grammar_is_400_naming_the_problem(admin, rule, problem):
    res = await admin.post("/policies", json={"name": name(), "rules": [rule]})
    assert res.status_code == 400, res.text
    assert problem in res.json()["issue"][0]["diagnostics"]


async def test_a_policy_name_must_be_a_simple_name(admin):
    res = await admin.post("/policies", json={"name": "a b/c", "rules": []})
    assert res.status_code == 400 and "name" in res.json()["issue"][0]["diagnostics"]


async def test_a_user_may_be_assigned_a_stored_policy(admin):
    policy = name()
    await admin.post("/policies", json=ward_nurse(policy))
    user = {"username": name("user"), "password": "correct horse battery", "policies": [policy]}
    res = await admin.post("/users", json=user)
    assert res.status_code == 201, res.text
    assert (await admin.get(f"/users/{user['username']}")).json()["policies"] == [policy]


async def test_assigning_an_unknown_policy_is_400(admin):
    user = {"username": name("user"), "password": "correct horse battery", "policies": [name("nope")]}
    res = await admin.post("/users", json=user)
    assert res.status_code == 400 and "no access policy named" in res.json()["issue"][0]["diagnostics"]
    client = {"name": "x", "scopes": ["system/*.rs"], "policies": [name("nope")]}
    assert (await admin.post("/clients", json=client)).status_code == 400


async def test_a_policy_assigned_to_someone_cannot_be_deleted(admin):
    policy = name()
    await admin.post("/policies", json=ward_nurse(policy))
    await admin.post(
        "/users", json={"username": name("user"), "password": "correct horse battery", "policies": [policy]}
    )
    res = await admin.delete(f"/policies/{policy}")
    assert res.status_code == 409 and "assigned" in res.json()["issue"][0]["diagnostics"]


async def test_only_an_admin_may_manage_policies(app, client_for):
    other = await client_for("system/*.*", client_id="not-admin", subject="not-admin")
    res = await other.get("http://testserver/admin/policies")
    assert res.status_code == 403
