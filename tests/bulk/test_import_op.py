"""$import (Bulk Data import, Parameters form) through the real app: kick-off, poll, manifest, errors."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import orjson

from tests.bulk.importing import ASYNC, errors, kick_off, parameters, run_import, tagged_patients, wait, write_input


async def _count(client: httpx.AsyncClient, rtype: str, query: str) -> int:
    res = await client.get(f"{rtype}?{query}&_summary=count")
    return res.json()["total"]


async def test_kick_off_without_prefer_respond_async_is_400(client: httpx.AsyncClient):
    url = write_input(client, [])
    res = await client.post("$import", json=parameters(("Patient", url)), headers={"Accept": "application/fhir+json"})
    assert res.status_code == 400
    assert "respond-async" in res.text


async def test_kick_off_answers_202_with_the_status_url(client: httpx.AsyncClient):
    url = write_input(client, [])
    res = await client.post("$import", json=parameters(("Patient", url)), headers=ASYNC)
    assert res.status_code == 202
    assert "$import-poll-status?_jobId=" in res.headers["Content-Location"]
    await wait(client, res.headers["Content-Location"])


async def test_every_line_of_a_file_input_is_loaded_and_counted(client: httpx.AsyncClient):
    query, patients = tagged_patients(7)
    url = write_input(client, patients)
    manifest = await run_import(client, ("Patient", url))
    assert manifest["output"] == [{"type": "Patient", "inputUrl": url, "count": 7}]
    assert manifest["error"] == []
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"].endswith("/$import")
    assert await _count(client, "Patient", query) == 7


async def test_inputs_of_several_types_load_with_their_references(client: httpx.AsyncClient):
    _query, patients = tagged_patients(2, with_ids=True)
    observations = [
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "pulse"},
            "subject": {"reference": f"Patient/{p['id']}"},
        }
        for p in patients
    ]
    manifest = await run_import(
        client, ("Patient", write_input(client, patients)), ("Observation", write_input(client, observations))
    )
    assert [o["count"] for o in manifest["output"]] == [2, 2]
    found = await client.get("Observation", params={"subject": f"Patient/{patients[0]['id']}"})
    assert found.json()["total"] == 1


async def test_a_gzipped_input_is_read(client: httpx.AsyncClient):
    query, patients = tagged_patients(3)
    name = write_input(client, patients, suffix=".ndjson")
    folder = client._transport.app.state.settings.data_dir / "bulk-import"  # type: ignore[attr-defined]
    (folder / f"{name}.gz").write_bytes(gzip.compress((folder / name).read_bytes()))
    manifest = await run_import(client, ("Patient", f"{name}.gz"))
    assert manifest["output"][0]["count"] == 3
    assert await _count(client, "Patient", query) == 3


async def test_a_resource_with_an_id_is_created_then_updated_by_a_second_import(client: httpx.AsyncClient):
    _, patients = tagged_patients(1, with_ids=True)
    await run_import(client, ("Patient", write_input(client, patients)))
    await run_import(client, ("Patient", write_input(client, [{**patients[0], "gender": "male"}])))
    res = await client.get(f"Patient/{patients[0]['id']}")
    assert res.json()["meta"]["versionId"] == "2"
    assert res.json()["gender"] == "male"


async def test_line_errors_are_reported_in_the_error_ndjson_and_the_other_lines_load(client: httpx.AsyncClient):
    query, patients = tagged_patients(3)
    lines: list[Any] = [
        patients[0],
        b"{not json",
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
        patients[1],
        {"resourceType": "Patient", "gender": "sometimes"},
        patients[2],
    ]
    url = write_input(client, lines)
    manifest = await run_import(client, ("Patient", url))
    assert manifest["output"][0]["count"] == 3
    assert [(e["type"], e["count"]) for e in manifest["error"]] == [("OperationOutcome", 3)]
    messages = await errors(client, manifest)
    assert [m.split(": ", 1)[0] for m in messages] == [f"{url} line 2", f"{url} line 3", f"{url} line 5"]
    assert "Observation in an input of type Patient" in messages[1]
    assert await _count(client, "Patient", query) == 3


async def test_a_file_url_inside_the_bulk_import_folder_is_read(client: httpx.AsyncClient):
    query, patients = tagged_patients(2)
    name = write_input(client, patients)
    folder = client._transport.app.state.settings.data_dir / "bulk-import"  # type: ignore[attr-defined]
    manifest = await run_import(client, ("Patient", (folder / name).as_uri()), storage="file")
    assert manifest["output"][0]["count"] == 2
    assert await _count(client, "Patient", query) == 2


async def test_a_missing_file_is_400(client: httpx.AsyncClient):
    res = await client.post("$import", json=parameters(("Patient", "no-such-file.ndjson")), headers=ASYNC)
    assert res.status_code == 400
    assert res.json()["issue"][0]["expression"] == ["Parameters.parameter[1].part.where(name = 'url')"]


async def test_a_file_outside_the_bulk_import_folder_is_400(client: httpx.AsyncClient):
    for url in ("../admin-client.json", "/etc/passwd", "file:///etc/passwd"):
        res = await client.post("$import", json=parameters(("Patient", url)), headers=ASYNC)
        assert res.status_code == 400, url
        assert "bulk-import folder" in res.text


async def test_an_input_url_of_another_scheme_is_400_and_says_which_are_read(client: httpx.AsyncClient):
    res = await client.post("$import", json=parameters(("Patient", "ftp://example.org/p.ndjson")), headers=ASYNC)
    assert res.status_code == 400
    assert "http(s)" in res.json()["issue"][0]["diagnostics"]


async def test_an_s3_input_without_a_configured_bucket_is_400(client: httpx.AsyncClient):
    res = await client.post("$import", json=parameters(("Patient", "s3://bucket/p.ndjson")), headers=ASYNC)
    assert res.status_code == 400
    assert "EHR_BULK_S3_URL" in res.text


async def test_a_url_unlike_its_storage_detail_type_is_400(client: httpx.AsyncClient):
    body = parameters(("Patient", "https://example.org/p.ndjson"), storage="file")
    res = await client.post("$import", json=body, headers=ASYNC)
    assert res.status_code == 400


async def test_an_unknown_resource_type_is_400(client: httpx.AsyncClient):
    url = write_input(client, [])
    res = await client.post("$import", json=parameters(("Patientt", url)), headers=ASYNC)
    assert res.status_code == 400


async def test_no_input_is_400(client: httpx.AsyncClient):
    res = await client.post("$import", json=parameters(), headers=ASYNC)
    assert res.status_code == 400


async def test_an_unknown_parameter_is_400_unless_handling_is_lenient(client: httpx.AsyncClient):
    url = write_input(client, [])
    body = parameters(("Patient", url), colour="blue")
    assert (await client.post("$import", json=body, headers=ASYNC)).status_code == 400
    lenient = {**ASYNC, "Prefer": "respond-async, handling=lenient"}
    res = await client.post("$import", json=body, headers=lenient)
    assert res.status_code == 202
    await wait(client, res.headers["Content-Location"])


async def test_another_input_format_is_400(client: httpx.AsyncClient):
    body = parameters(("Patient", write_input(client, [])))
    body["parameter"][0]["valueCode"] = "text/csv"
    assert (await client.post("$import", json=body, headers=ASYNC)).status_code == 400


async def test_a_client_without_a_system_scope_is_403(client: httpx.AsyncClient, client_for: Any):
    url = write_input(client, [])
    user = await client_for("user/*.*", fhirUser="Practitioner/1")
    res = await user.post("$import", json=parameters(("Patient", url)), headers=ASYNC)
    assert res.status_code == 403


async def test_a_system_client_that_may_not_write_the_type_is_403(client: httpx.AsyncClient, client_for: Any):
    url = write_input(client, [])
    reader = await client_for("system/*.rs")
    res = await reader.post("$import", json=parameters(("Patient", url)), headers=ASYNC)
    assert res.status_code == 403
    writer = await client_for("system/Observation.cud system/*.rs")
    res = await writer.post("$import", json=parameters(("Patient", url)), headers=ASYNC)
    assert res.status_code == 403


async def test_a_system_client_with_write_on_the_type_may_import(client: httpx.AsyncClient, client_for: Any):
    _query, patients = tagged_patients(2)
    writer = await client_for("system/Patient.cud system/Patient.rs")
    manifest = await run_import(writer, ("Patient", write_input(client, patients)))
    assert manifest["output"][0]["count"] == 2


async def test_only_the_kick_off_client_sees_the_job(client: httpx.AsyncClient, client_for: Any):
    status_url = await kick_off(client, parameters(("Patient", write_input(client, []))))
    other = await client_for("system/*.*", client_id="another-client", subject="another-client")
    assert (await other.get(status_url)).status_code == 404
    assert (await other.delete(status_url)).status_code == 404
    await wait(client, status_url)


async def test_polling_sooner_than_retry_after_is_429(node: Any):
    api = await node(bulk_import_jobs=False)  # the job stays queued
    status_url = await kick_off(api, parameters(("Patient", write_input(api, []))))
    first = await api.get(status_url)
    assert first.status_code == 202 and first.headers["X-Progress"] == "queued"
    assert int(first.headers["Retry-After"]) >= 1
    again = await api.get(status_url)
    assert again.status_code == 429
    assert "Retry-After" in again.headers


async def test_a_cancelled_job_is_gone(node: Any):
    api = await node(bulk_import_jobs=False)
    status_url = await kick_off(api, parameters(("Patient", write_input(api, []))))
    assert (await api.delete(status_url)).status_code == 202
    assert (await api.get(status_url)).status_code == 404


async def test_error_file_of_an_unknown_input_is_404(client: httpx.AsyncClient):
    status_url = await kick_off(client, parameters(("Patient", write_input(client, []))))
    await wait(client, status_url)
    job = status_url.rsplit("=", 1)[1]
    res = await client.get(f"$import-errors?_jobId={job}&input=7", headers={"Accept": "application/fhir+ndjson"})
    assert res.status_code == 404


async def test_the_error_ndjson_is_made_of_operation_outcomes(client: httpx.AsyncClient):
    manifest = await run_import(client, ("Patient", write_input(client, [b"[1, 2]"])))
    res = await client.get(manifest["error"][0]["url"])
    assert res.headers["content-type"].startswith("application/fhir+ndjson")
    outcome = orjson.loads(res.content.splitlines()[0])
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"


async def test_line_errors_past_the_limit_are_counted_in_a_last_line(node: Any):
    api = await node(bulk_import_max_errors=2)
    manifest = await run_import(api, ("Patient", write_input(api, [b"{"] * 4)))
    assert manifest["error"][0]["count"] == 3
    messages = await errors(api, manifest)
    assert "line 1" in messages[0] and "line 2" in messages[1]
    assert "2 more lines in error" in messages[2]


async def test_a_sixth_open_import_of_one_client_is_429(node: Any):
    api = await node(bulk_import_jobs=False)  # the jobs stay queued
    url = write_input(api, [])
    for _ in range(5):
        await kick_off(api, parameters(("Patient", url)))
    res = await api.post("$import", json=parameters(("Patient", url)), headers=ASYNC)
    assert res.status_code == 429
    assert res.headers["Retry-After"]
