"""A reference to another server is not a reference to ours (R4 references.html#literal).

`http://other.example.org/fhir/Patient/123` names a Patient on another server: it is
found by its URL, but never joins local Patient/123's compartment, `$everything`,
`patient=` results, includes or chains. An absolute URL on this server's base (the
base the request came in on, here http://testserver/fhir) is the same as the
relative reference.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.search.searching import FHIR_JSON, create, include_keys, match_ids, search, unique

OTHER = "http://other.example.org/fhir"
OURS = "http://testserver/fhir"


async def _patient(client) -> str:
    pid = unique("p")
    res = await client.put(
        f"/Patient/{pid}",
        json={"resourceType": "Patient", "id": pid, "name": [{"family": pid}]},
        headers={"Content-Type": FHIR_JSON},
    )
    assert res.status_code == 201, res.text
    return pid


async def _observation(client, reference: str) -> str:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": reference},
    }
    return (await create(client, obs))["id"]


async def test_a_foreign_reference_is_not_in_the_local_patients_compartment(client):
    pid = await _patient(client)
    local = await _observation(client, f"Patient/{pid}")
    await _observation(client, f"{OTHER}/Patient/{pid}")
    assert match_ids(await search(client, f"/Patient/{pid}/Observation", [])) == [local]


async def test_a_foreign_reference_is_not_in_the_local_patients_everything(client):
    pid = await _patient(client)
    local = await _observation(client, f"Patient/{pid}")
    foreign = await _observation(client, f"{OTHER}/Patient/{pid}")
    bundle = await search(client, f"/Patient/{pid}/$everything", [])
    ids = {e["resource"]["id"] for e in bundle.get("entry", [])}
    assert local in ids and foreign not in ids


async def test_patient_search_does_not_find_a_foreign_reference(client):
    pid = await _patient(client)
    local = await _observation(client, f"Patient/{pid}")
    await _observation(client, f"{OTHER}/Patient/{pid}")
    assert match_ids(await search(client, "/Observation", [("patient", pid)])) == [local]
    assert match_ids(await search(client, "/Observation", [("subject", f"Patient/{pid}")])) == [local]
    assert match_ids(await search(client, "/Observation", [("subject:Patient", pid)])) == [local]


async def test_a_foreign_reference_is_found_by_its_exact_url_only(client):
    pid = await _patient(client)
    await _observation(client, f"Patient/{pid}")
    foreign = await _observation(client, f"{OTHER}/Patient/{pid}")
    assert match_ids(await search(client, "/Observation", [("subject", f"{OTHER}/Patient/{pid}")])) == [foreign]


async def test_an_absolute_reference_on_our_base_is_local(client):
    pid = await _patient(client)
    absolute = await _observation(client, f"{OURS}/Patient/{pid}")
    assert match_ids(await search(client, f"/Patient/{pid}/Observation", [])) == [absolute]
    assert match_ids(await search(client, "/Observation", [("patient", pid)])) == [absolute]


async def test_a_search_by_an_absolute_url_on_our_base_finds_relative_references(client):
    pid = await _patient(client)
    local = await _observation(client, f"Patient/{pid}")
    await _observation(client, f"{OTHER}/Patient/{pid}")
    assert match_ids(await search(client, "/Observation", [("subject", f"{OURS}/Patient/{pid}")])) == [local]


async def test_include_does_not_follow_a_foreign_reference(client):
    pid = await _patient(client)
    foreign = await _observation(client, f"{OTHER}/Patient/{pid}")
    bundle = await search(client, "/Observation", [("_id", foreign), ("_include", "Observation:subject")])
    assert match_ids(bundle) == [foreign]
    assert include_keys(bundle) == set()


async def test_revinclude_does_not_bring_a_foreign_referrer(client):
    pid = await _patient(client)
    local = await _observation(client, f"Patient/{pid}")
    await _observation(client, f"{OTHER}/Patient/{pid}")
    bundle = await search(client, "/Patient", [("_id", pid), ("_revinclude", "Observation:subject")])
    assert include_keys(bundle) == {("Observation", local)}


async def test_a_chain_does_not_follow_a_foreign_reference(client):
    pid = await _patient(client)
    local = await _observation(client, f"Patient/{pid}")
    await _observation(client, f"{OTHER}/Patient/{pid}")
    assert match_ids(await search(client, "/Observation", [("subject:Patient.name", pid)])) == [local]


async def test_reindex_keeps_a_reference_on_our_base_local_and_a_foreign_one_foreign(client):
    pid = await _patient(client)
    absolute = await _observation(client, f"{OURS}/Patient/{pid}")
    foreign = await _observation(client, f"{OTHER}/Patient/{pid}")
    for oid in (absolute, foreign):
        res = await client.post(f"/Observation/{oid}/$reindex")
        assert res.status_code == 200, res.text
    assert match_ids(await search(client, f"/Patient/{pid}/Observation", [])) == [absolute]


async def test_a_transaction_entry_on_another_server_stays_foreign(client):
    pid = await _patient(client)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": f"{OTHER}/Patient/{pid}"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": f"{OURS}/Patient/{pid}"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    res = await client.post("/", json=bundle, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 200, res.text
    ours = res.json()["entry"][1]["response"]["location"].split("/")[1]
    assert match_ids(await search(client, f"/Patient/{pid}/Observation", [])) == [ours]


PUBLIC = "https://ehr.example.org/fhir"


@pytest.fixture
async def public_client(app_with) -> httpx.AsyncClient:
    """A client of a second app whose EHR_PUBLIC_BASE_URL is PUBLIC (same database),
    reached on another host name, as behind a proxy."""
    return await app_with("http://internal:8080/fhir", public_base_url=PUBLIC, pool_min_size=1, pool_max_size=2)


async def test_with_a_public_base_references_under_it_are_local_and_the_request_host_is_not(public_client):
    pid = await _patient(public_client)
    public = await _observation(public_client, f"{PUBLIC}/Patient/{pid}")
    await _observation(public_client, f"http://internal:8080/fhir/Patient/{pid}")
    assert match_ids(await search(public_client, f"/Patient/{pid}/Observation", [])) == [public]


async def test_a_canonical_on_our_base_is_found_by_its_exact_url(client):
    qid = unique("q")
    response = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": f"{OURS}/Questionnaire/{qid}",
    }
    rid = (await create(client, response))["id"]
    found = await search(client, "/QuestionnaireResponse", [("questionnaire", f"{OURS}/Questionnaire/{qid}")])
    assert match_ids(found) == [rid]
