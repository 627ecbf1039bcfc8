"""Asynchronous requests keep the caller's rights, belong to their caller, can be
cancelled, and are bounded per client."""

from __future__ import annotations

import asyncio
import uuid

import orjson

from tests.audit.test_audit_events import events_naming, query_of, subtype
from tests.rest.asyncflow import ASYNC, answer, kick_off, row_locked, run, until_running

FHIR = {"Content-Type": "application/fhir+json"}


async def _patient(client, family: str) -> str:
    res = await client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": family}]}, headers=FHIR)
    assert res.status_code == 201, res.text
    return res.json()["id"]


async def _observation(client, pid: str, text: str) -> str:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": text},
        "subject": {"reference": f"Patient/{pid}"},
    }
    res = await client.post("/Observation", json=obs, headers=FHIR)
    assert res.status_code == 201, res.text
    return res.json()["id"]


async def _version_after_waiting_writes(client, pid: str) -> str:
    """Write the Patient once more: in line behind any transaction holding it (row locks are
    granted in order), so its version tells whether such a transaction wrote it too."""
    res = await client.put(
        f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "name": [{"family": "Later"}]}, headers=FHIR
    )
    assert res.status_code == 200, res.text
    return res.json()["meta"]["versionId"]


def _renamed(pid: str, family: str) -> dict:
    entry = {
        "resource": {"resourceType": "Patient", "id": pid, "name": [{"family": family}]},
        "request": {"method": "PUT", "url": f"Patient/{pid}"},
    }
    return {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}


async def test_a_patient_tokens_async_search_sees_its_own_compartment_only(client, client_for):
    text = f"Async{uuid.uuid4().hex[:8]}"
    mine, other = await _patient(client, "Mine"), await _patient(client, "Other")
    own = await _observation(client, mine, text)
    await _observation(client, other, text)
    patient = await client_for("patient/*.rs", patient=mine, subject=f"user-{mine}", client_id="patient-app")
    res = await run(patient, "GET", "/Observation", params={"code:text": text})
    assert res.status_code == 200, res.text
    assert [e["resource"]["id"] for e in res.json().get("entry", [])] == [own]


async def test_another_clients_status_url_is_not_found(client, client_for):
    status_url = await kick_off(client, "GET", "/Patient", params={"_count": "1"})
    stranger = await client_for("system/*.*", subject="stranger", client_id="stranger")
    assert (await stranger.get(status_url)).status_code == 404
    assert (await stranger.delete(status_url)).status_code == 404
    assert (await answer(client, status_url)).status_code == 200


async def test_an_unknown_status_url_is_not_found(client):
    assert (await client.get(f"/$async-status?_id={uuid.uuid4()}")).status_code == 404
    assert (await client.get("/$async-status?_id=not-a-uuid")).status_code == 404


async def test_a_running_request_answers_202_with_progress(client, db):
    pid = await _patient(client, "Before")
    async with row_locked(db, "Patient", pid):
        status_url = await kick_off(client, "POST", "", json=_renamed(pid, "After"), headers=FHIR)
        await until_running(db, status_url)
        res = await client.get(status_url)
        assert res.status_code == 202
        assert res.headers["Retry-After"] == "1"
        assert res.headers["X-Progress"].startswith("running")
    assert (await answer(client, status_url)).status_code == 200


async def test_a_status_request_sooner_than_retry_after_is_429(client, db):
    pid = await _patient(client, "Before")
    async with row_locked(db, "Patient", pid):
        status_url = await kick_off(client, "POST", "", json=_renamed(pid, "After"), headers=FHIR)
        await until_running(db, status_url)
        assert (await client.get(status_url)).status_code == 202
        too_soon = await client.get(status_url)
        assert too_soon.status_code == 429
        assert too_soon.headers["Retry-After"] == "1"
    await asyncio.sleep(1)
    assert (await answer(client, status_url)).status_code == 200


async def test_a_cancelled_running_transaction_is_never_applied(client, db):
    pid = await _patient(client, "Before")
    async with row_locked(db, "Patient", pid):
        status_url = await kick_off(client, "POST", "", json=_renamed(pid, "After"), headers=FHIR)
        await until_running(db, status_url)
        assert (await client.delete(status_url)).status_code == 202
    assert await _version_after_waiting_writes(client, pid) == "2"  # the cancelled one wrote nothing
    assert (await client.get(status_url)).status_code == 404


async def test_a_cancelled_queued_request_is_never_run(client, db):
    pid = await _patient(client, "Before")
    async with row_locked(db, "Patient", pid):  # the worker is busy with the first; the second waits
        first = await kick_off(client, "POST", "", json=_renamed(pid, "First"), headers=FHIR)
        await until_running(db, first)
        second = await kick_off(client, "POST", "", json=_renamed(pid, "Second"), headers=FHIR)
        assert (await client.delete(second)).status_code == 202
    assert (await answer(client, first)).status_code == 200
    assert (await client.get(second)).status_code == 404
    assert (await client.get(f"/Patient/{pid}")).json()["name"][0]["family"] == "First"


async def test_deleting_a_finished_request_removes_its_answer(client):
    status_url = await kick_off(client, "GET", "/Patient", params={"_count": "1"})
    assert (await answer(client, status_url)).status_code == 200
    assert (await client.delete(status_url)).status_code == 202
    assert (await client.get(status_url)).status_code == 404


async def test_a_client_over_its_open_requests_is_told_429(app_with, db):
    node = await app_with(async_max_open=1)
    pid = await _patient(node, "Before")
    async with row_locked(db, "Patient", pid):
        first = await kick_off(node, "POST", "", json=_renamed(pid, "After"), headers=FHIR)
        res = await node.get("/Patient", params={"_count": "1"}, headers=ASYNC)
        assert res.status_code == 429
        assert res.json()["resourceType"] == "OperationOutcome"
    assert (await answer(node, first)).status_code == 200


async def test_an_async_request_body_over_the_limit_is_413_at_once(client, app):
    limit = app.state.settings.max_body_bytes
    res = await client.post("", content=b" " * (limit + 1), headers={**FHIR, **ASYNC})
    assert res.status_code == 413


async def test_a_cancelled_large_transaction_is_never_applied(client, db):
    pid = await _patient(client, "Before")
    family = f"Async{uuid.uuid4().hex[:8]}"
    bundle = _renamed(pid, "After")
    filler = {"resourceType": "Patient", "name": [{"family": family, "text": "x" * 1000}]}
    bundle["entry"] += [{"resource": filler, "request": {"method": "POST", "url": "Patient"}}] * 300
    async with row_locked(db, "Patient", pid):
        status_url = await kick_off(client, "POST", "", json=bundle, headers=FHIR)
        await until_running(db, status_url)
        assert (await client.delete(status_url)).status_code == 202
    assert await _version_after_waiting_writes(client, pid) == "2"
    found = await client.get("/Patient", params={"family": family, "_summary": "count"})
    assert found.json()["total"] == 0


async def test_a_request_whose_nodes_died_three_times_is_given_up_and_never_applied(client, app_with, db):
    pid = await _patient(client, "Before")
    async with row_locked(db, "Patient", pid):
        status_url = await kick_off(client, "POST", "", json=_renamed(pid, "After"), headers=FHIR)
        await until_running(db, status_url)
        request_id = status_url.rsplit("=", 1)[1]
        # as if the node running it had died on its third claim: its lease ran out
        await db.execute(
            "UPDATE async_request SET attempts = 3, lease_until = now() - interval '1 second' WHERE id = $1::uuid",
            request_id,
        )
        await app_with()  # another node, whose worker looks for requests to claim
        for _ in range(100):
            if await db.fetchval("SELECT status FROM async_request WHERE id = $1::uuid", request_id) == "failed":
                break
            await asyncio.sleep(0.1)
    res = await answer(client, status_url)
    assert res.status_code == 500
    assert res.json()["resourceType"] == "OperationOutcome"
    assert await _version_after_waiting_writes(client, pid) == "2"  # the first node's work was rolled back


async def test_a_transaction_whose_answer_is_over_the_limit_is_400_too_costly_and_not_applied(client, app_with, db):
    pid = await _patient(client, "Before")
    family = f"Async{uuid.uuid4().hex[:8]}"
    patient = {"resourceType": "Patient", "name": [{"family": family, "text": "x" * 200}]}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": patient, "request": {"method": "POST", "url": "Patient"}}] * 10,
    }
    async with row_locked(db, "Patient", pid):
        busy = await kick_off(client, "POST", "", json=_renamed(pid, "After"), headers=FHIR)
        await until_running(db, busy)  # this node's worker waits on the row: the next node runs the next request
        node = await app_with(async_max_result_bytes=1024)
        status_url = await kick_off(
            node, "POST", "", json=bundle, headers={**FHIR, "Prefer": "respond-async, return=representation"}
        )
        res = await answer(node, status_url)
    assert res.status_code == 400  # the client's request is over a limit: not a server fault
    assert res.json()["issue"][0]["code"] == "too-costly"
    found = await client.get("/Patient", params={"family": family, "_summary": "count"})
    assert found.json()["total"] == 0
    assert (await answer(client, busy)).status_code == 200


async def test_an_async_search_is_audited_as_its_caller_when_it_runs(client, client_for, app, db):
    pid = await _patient(client, "Audited")
    caller = await client_for("system/*.rs", subject="auditee", client_id="auditee")
    res = await run(caller, "GET", "/Observation", params={"patient": pid})
    assert res.status_code == 200
    events = [e for e in await events_naming(app, db, f"Patient/{pid}") if subtype(e) == "search-type"]
    assert len(events) == 2  # the kick-off and the search itself, each with the query, as the caller
    assert {query_of(e) for e in events} == {f"/fhir/Observation?patient={pid}"}
    assert all(e["outcome"] == "0" for e in events)
    assert all("auditee" in orjson.dumps(e["agent"]).decode() for e in events)
