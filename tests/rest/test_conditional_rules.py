"""Conditional interactions match on search parameters alone (R4 http.html#cond-update).

One rule for REST (If-None-Exist, conditional PUT, PATCH and DELETE) and bundles
(ifNoneExist, conditional entries, `Type?criteria` references): result parameters
are refused with 400, empty criteria are 400, several matches are 412 unless
EHR_CONDITIONAL_DELETE=multiple lets a conditional delete remove them all.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

FHIR_JSON = "application/fhir+json"
RESULT_PARAMETERS = [
    "_count=1",
    "_sort=family",
    "_summary=count",
    "_total=accurate",
    "_elements=id",
    "_include=Patient:link",
    "_revinclude=Observation:subject",
    "_contained=true",
    "_containedType=contained",
    "_cursor=abc",
]

ADD_GENDER = b'[{"op": "add", "path": "/gender", "value": "other"}]'


def patient(family: str) -> dict:
    return {"resourceType": "Patient", "name": [{"family": family}]}


async def smiths(client, n: int = 2) -> tuple[str, list[str]]:
    """n Patients sharing a family name nobody else has; returns it and their ids."""
    family = f"Smith{uuid.uuid4().hex[:12]}"
    ids = [(await client.post("/Patient", json=patient(family))).json()["id"] for _ in range(n)]
    return family, ids


async def live(client, family: str) -> int:
    return (await client.get("/Patient", params={"family": family})).json()["total"]


def is_outcome(res: httpx.Response, status: int) -> bool:
    return res.status_code == status and res.json()["resourceType"] == "OperationOutcome"


def transaction(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


@pytest.mark.parametrize("result", RESULT_PARAMETERS)
async def test_conditional_delete_refuses_result_parameters(client, result):
    family, _ = await smiths(client)
    res = await client.delete(f"/Patient?family={family}&{result}")
    assert is_outcome(res, 400)
    assert await live(client, family) == 2


@pytest.mark.parametrize("result", RESULT_PARAMETERS)
async def test_if_none_exist_refuses_result_parameters(client, result):
    family, _ = await smiths(client, 1)
    res = await client.post("/Patient", json=patient(family), headers={"If-None-Exist": f"family={family}&{result}"})
    assert is_outcome(res, 400)
    assert await live(client, family) == 1


async def test_conditional_update_refuses_result_parameters(client):
    family, _ = await smiths(client)
    res = await client.put(f"/Patient?family={family}&_count=1", json={**patient(family), "gender": "other"})
    assert is_outcome(res, 400)
    bundle = (await client.get("/Patient", params={"family": family, "gender": "other"})).json()
    assert bundle["total"] == 0


async def test_conditional_patch_refuses_result_parameters(client):
    family, _ = await smiths(client)
    res = await client.patch(
        f"/Patient?family={family}&_sort=family&_count=1",
        content=ADD_GENDER,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert is_outcome(res, 400)
    bundle = (await client.get("/Patient", params={"family": family, "gender": "other"})).json()
    assert bundle["total"] == 0


async def test_transaction_if_none_exist_refuses_result_parameters(client):
    family, _ = await smiths(client, 1)
    entry = {
        "resource": patient(family),
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"family={family}&_summary=count"},
    }
    res = await client.post("", json=transaction(entry))
    assert is_outcome(res, 400)
    assert await live(client, family) == 1


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_transaction_conditional_url_refuses_result_parameters(client, method):
    family, _ = await smiths(client)
    entry: dict = {"request": {"method": method, "url": f"Patient?family={family}&_count=1"}}
    if method == "PUT":
        entry["resource"] = patient(family)
    res = await client.post("", json=transaction(entry))
    assert is_outcome(res, 400)
    assert await live(client, family) == 2


async def test_conditional_reference_refuses_result_parameters(client):
    family, _ = await smiths(client)
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient?family={family}&_count=1"},
    }
    res = await client.post(
        "", json=transaction({"resource": observation, "request": {"method": "POST", "url": "Observation"}})
    )
    assert is_outcome(res, 400)


@pytest.mark.parametrize("header", ["", "_format=json", "?"])
async def test_if_none_exist_without_criteria_is_400(client, header):
    family = f"Nobody{uuid.uuid4().hex[:12]}"
    res = await client.post("/Patient", json=patient(family), headers={"If-None-Exist": header})
    assert is_outcome(res, 400)
    assert await live(client, family) == 0


@pytest.mark.parametrize("url", ["/Patient", "/Patient?_format=json"])
async def test_conditional_update_without_criteria_is_400(client, url):
    assert is_outcome(await client.put(url, json=patient("x")), 400)


async def test_if_none_exist_for_another_type_is_400(client):
    res = await client.post("/Patient", json=patient("x"), headers={"If-None-Exist": "Observation?code=1"})
    assert is_outcome(res, 400)


async def test_if_none_exist_may_name_its_own_type(client):
    family, ids = await smiths(client, 1)
    res = await client.post("/Patient", json=patient(family), headers={"If-None-Exist": f"Patient?family={family}"})
    assert res.status_code == 200 and res.json()["id"] == ids[0]


async def test_format_in_a_conditional_delete_url_is_not_a_criterion(client):
    family, _ = await smiths(client, 1)
    res = await client.delete(f"/Patient?family={family}&_format=json")
    assert res.status_code == 200
    assert await live(client, family) == 0


async def test_conditional_patch_with_several_matches_is_412(client):
    family, _ = await smiths(client)
    res = await client.patch(
        f"/Patient?family={family}",
        content=ADD_GENDER,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert is_outcome(res, 412)


async def test_conditional_patch_with_one_match_patches_it(client):
    family, ids = await smiths(client, 1)
    res = await client.patch(
        f"/Patient?family={family}",
        content=ADD_GENDER,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert res.status_code == 200
    assert res.json()["id"] == ids[0] and res.json()["gender"] == "other"


async def test_conditional_delete_of_several_is_412_by_default(client):
    family, _ = await smiths(client, 3)
    assert is_outcome(await client.delete(f"/Patient?family={family}"), 412)
    assert await live(client, family) == 3


async def test_capability_statement_says_conditional_delete_is_single_by_default(client):
    statement = (await client.get("/metadata")).json()
    modes = {r["conditionalDelete"] for r in statement["rest"][0]["resource"] if r["type"] != "AuditEvent"}
    assert modes == {"single"}  # AuditEvent: not-supported (the audit trail is append-only)


@pytest.fixture
async def multiple_client(app_with) -> httpx.AsyncClient:
    """A second app on the same database with EHR_CONDITIONAL_DELETE=multiple."""
    return await app_with(conditional_delete="multiple")


async def test_conditional_delete_multiple_deletes_every_match(multiple_client):
    family, ids = await smiths(multiple_client, 3)
    res = await multiple_client.delete(f"/Patient?family={family}")
    assert res.status_code == 200
    assert await live(multiple_client, family) == 0
    for rid in ids:
        assert (await multiple_client.get(f"/Patient/{rid}")).status_code == 410


@pytest.fixture
async def small_pages_multiple_client(app_with) -> httpx.AsyncClient:
    """EHR_CONDITIONAL_DELETE=multiple with pages of at most 2 resources."""
    return await app_with(conditional_delete="multiple", max_page_size=2)


async def test_conditional_delete_multiple_deletes_matches_beyond_one_page(client, small_pages_multiple_client):
    family, _ = await smiths(client, 5)
    res = await small_pages_multiple_client.delete(f"/Patient?family={family}")
    assert res.status_code == 200
    assert await live(client, family) == 0


async def test_conditional_delete_multiple_still_refuses_result_parameters(multiple_client):
    family, _ = await smiths(multiple_client, 3)
    assert is_outcome(await multiple_client.delete(f"/Patient?family={family}&_count=1"), 400)
    assert await live(multiple_client, family) == 3


async def test_transaction_conditional_delete_multiple_deletes_every_match(multiple_client):
    family, _ = await smiths(multiple_client, 3)
    entry = {"request": {"method": "DELETE", "url": f"Patient?family={family}"}}
    res = await multiple_client.post("", json=transaction(entry))
    assert res.status_code == 200, res.text
    assert await live(multiple_client, family) == 0


async def test_capability_statement_says_conditional_delete_is_multiple_when_configured(multiple_client):
    statement = (await multiple_client.get("/metadata")).json()
    assert {r["conditionalDelete"] for r in statement["rest"][0]["resource"] if r["type"] != "AuditEvent"} == {
        "multiple"
    }


def test_an_unknown_conditional_delete_mode_stops_start_up(monkeypatch):
    from headless_ehr.config import Settings

    monkeypatch.setenv("EHR_CONDITIONAL_DELETE", "some")
    with pytest.raises(ValueError, match="EHR_CONDITIONAL_DELETE"):
        Settings.from_env()


@pytest.mark.parametrize("result", ["_sort.x=1", "_count:x=1"])
async def test_a_result_parameter_with_a_suffix_is_still_refused(client, result):
    """The search parser ignores `_sort.x` as a result parameter; as a criterion it
    would leave no criteria at all and match every Patient."""
    family, _ = await smiths(client, 1)
    assert is_outcome(await client.delete(f"/Patient?{result}"), 400)
    assert await live(client, family) == 1


async def test_conditional_delete_multiple_is_bounded(client, multiple_client, monkeypatch):
    from headless_ehr.store import repository

    monkeypatch.setattr(repository, "MAX_CONDITIONAL_DELETES", 3)
    family, _ = await smiths(client, 4)
    res = await multiple_client.delete(f"/Patient?family={family}")
    assert res.status_code == 412 and res.json()["resourceType"] == "OperationOutcome"
    assert await live(client, family) == 4  # nothing deleted
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": f"Patient?family={family}"}}],
    }
    assert (await multiple_client.post("", json=bundle)).status_code == 412
    assert await live(client, family) == 4
