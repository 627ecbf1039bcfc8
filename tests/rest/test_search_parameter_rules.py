"""What a stored SearchParameter may be, and who may run $reindex.

A SearchParameter that would be registered is refused with 400 (and never stored)
when it redefines an R4 parameter, when its expression is not FHIRPath, starts at a
type that is not its base, names an element its base type does not have, or uses a
regular expression. Only a system-level caller may run $reindex.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from headless_ehr.fhir.definitions import definitions

FHIR_JSON = "application/fhir+json"


def search_parameter(code: str, expression: str, base: str = "Patient", kind: str = "token", **extra: Any) -> dict:
    return {
        "resourceType": "SearchParameter",
        "url": f"http://example.org/SearchParameter/{code}-{uuid.uuid4().hex[:8]}",
        "name": code,
        "status": "active",
        "description": "a test parameter",
        "code": code,
        "base": [base],
        "type": kind,
        "expression": expression,
        **extra,
    }


async def _post(client, resource: dict):
    return await client.post("/SearchParameter", json=resource, headers={"Content-Type": FHIR_JSON})


async def _stored(client, url: str) -> int:
    res = await client.get("/SearchParameter", params={"url": url})
    assert res.status_code == 200, res.text
    return res.json()["total"]


def _diagnostics(res) -> str:
    assert res.headers["content-type"].startswith(FHIR_JSON)
    return " ".join(i.get("diagnostics", "") for i in res.json()["issue"])


async def test_a_parameter_redefining_an_r4_parameter_is_refused_and_not_stored(client):
    resource = search_parameter("subject", "Condition.subject", base="Condition", kind="reference")
    res = await _post(client, resource)
    assert res.status_code == 400
    assert "Condition-subject" in _diagnostics(res)
    assert await _stored(client, resource["url"]) == 0


async def test_a_resource_level_parameter_clashing_with_any_types_parameter_is_refused(client):
    res = await _post(client, search_parameter("gender", "Resource.meta.source", base="Resource", kind="uri"))
    assert res.status_code == 400
    assert "gender" in _diagnostics(res)


async def test_an_update_to_a_clashing_code_is_refused_and_keeps_the_stored_version(client):
    resource = search_parameter(f"eyes-{uuid.uuid4().hex[:6]}", "Patient.maritalStatus")
    created = (await _post(client, resource)).json()
    changed = {**created, "code": "gender"}
    res = await client.put(f"/SearchParameter/{created['id']}", json=changed, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 400
    assert (await client.get(f"/SearchParameter/{created['id']}")).json()["code"] == resource["code"]


async def test_the_specifications_own_definition_of_a_parameter_may_be_stored(client):
    url = "http://hl7.org/fhir/SearchParameter/individual-gender"
    spec = next(sp for sp in definitions().search_parameters if sp["url"] == url)
    res = await _post(client, {k: v for k, v in spec.items() if k not in ("id", "meta")})
    assert res.status_code == 201, res.text


async def test_an_expression_that_is_not_fhirpath_is_refused(client):
    res = await _post(client, search_parameter(f"bad-{uuid.uuid4().hex[:6]}", "Patient.name.("))
    assert res.status_code == 400
    assert "not valid FHIRPath" in _diagnostics(res)


async def test_an_expression_naming_an_unknown_element_is_refused(client):
    res = await _post(client, search_parameter(f"bad-{uuid.uuid4().hex[:6]}", "Patient.name.where(usee = 'x').family"))
    assert res.status_code == 400
    assert "HumanName has no element 'usee'" in _diagnostics(res)


async def test_an_expression_starting_at_another_type_than_its_base_is_refused(client):
    res = await _post(client, search_parameter(f"bad-{uuid.uuid4().hex[:6]}", "Observation.code"))
    assert res.status_code == 400
    assert "Observation" in _diagnostics(res)


async def test_an_expression_with_a_regular_expression_is_refused(client):
    res = await _post(client, search_parameter(f"bad-{uuid.uuid4().hex[:6]}", "Patient.name.given.matches('(a+)+$')"))
    assert res.status_code == 400
    assert "matches()" in _diagnostics(res)


async def test_an_expression_nested_beyond_the_limit_is_refused(client):
    expression = "Patient" + ".name" * 200
    res = await _post(client, search_parameter(f"deep-{uuid.uuid4().hex[:6]}", expression))
    assert res.status_code == 400
    assert "more than" in _diagnostics(res)


async def test_an_expression_through_choices_and_extensions_is_accepted(client):
    expression = "Patient.extension('http://example.org/x').value.ofType(CodeableConcept).coding"
    res = await _post(client, search_parameter(f"ext-{uuid.uuid4().hex[:6]}", expression))
    assert res.status_code == 201, res.text


async def test_a_retired_parameter_is_stored_unchecked(client):
    resource = search_parameter("gender", "Patient.gender", status="retired")
    res = await _post(client, resource)
    assert res.status_code == 201, res.text


async def test_a_transaction_holding_a_clashing_parameter_fails_and_writes_nothing(client):
    marker = uuid.uuid4().hex
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "name": [{"family": marker}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": search_parameter("birthdate", "Patient.birthDate", kind="date"),
                "request": {"method": "POST", "url": "SearchParameter"},
            },
        ],
    }
    res = await client.post("/", json=bundle, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 400
    assert "birthdate" in _diagnostics(res)
    assert (await client.get("/Patient", params={"family": marker})).json()["total"] == 0


@pytest.fixture
async def as_user(client_for):
    """A practitioner's client holding every user-level right (as a SMART user token)."""
    return await client_for("user/*.cruds", fhirUser="Practitioner/1")


async def test_reindex_by_a_non_system_caller_is_forbidden_and_starts_nothing(db, as_user):
    client = as_user
    jobs = await db.fetchval("SELECT count(*) FROM job WHERE kind = 'reindex'")
    res = await client.post("/Patient/$reindex")
    assert res.status_code == 403
    assert "system" in _diagnostics(res)
    assert await db.fetchval("SELECT count(*) FROM job WHERE kind = 'reindex'") == jobs


async def test_instance_reindex_by_a_non_system_caller_is_forbidden(as_user):
    assert (await as_user.post("/Patient/anything/$reindex")).status_code == 403


async def test_reindex_status_for_a_non_system_caller_is_forbidden(as_user):
    assert (await as_user.get("/$reindex?job=nope")).status_code == 403
