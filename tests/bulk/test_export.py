"""$export (Bulk Data Access 2.0.0) through the real app: kick-off, poll, download."""

from __future__ import annotations

import gzip

import httpx
import pytest

from tests.bulk.exporting import (
    ASYNC,
    create,
    download,
    export,
    kick_off,
    patient_with_observations,
    tag,
    tagged,
    wait,
)


async def test_kick_off_without_prefer_respond_async_is_400(client: httpx.AsyncClient):
    res = await client.get("$export", headers={"Accept": "application/fhir+json"})
    assert res.status_code == 400
    assert "respond-async" in res.text


async def test_kick_off_answers_202_with_the_status_url(client: httpx.AsyncClient):
    res = await client.get("$export", params={"_type": "Patient"}, headers=ASYNC)
    assert res.status_code == 202
    await client.delete(res.headers["Content-Location"])  # no job left running
    assert "$export-poll-status?_jobId=" in res.headers["Content-Location"]


async def test_line_counts_equal_summary_count_per_type(client: httpx.AsyncClient):
    _, meta = tag()
    for _ in range(3):
        await patient_with_observations(client, meta, n=3)
    lines = await export(client, _type="Patient,Observation")
    for rtype in ("Patient", "Observation"):
        count = (await client.get(rtype, params={"_summary": "count"})).json()["total"]
        assert len(lines[rtype]) == count
        assert len({r["id"] for r in lines[rtype]}) == count  # no line twice


async def test_manifest_says_when_what_and_that_a_token_is_needed(client: httpx.AsyncClient):
    code, meta = tag()
    await patient_with_observations(client, meta, n=1)
    status_url = await kick_off(client, _type="Patient", _typeFilter=f"Patient?{tagged(code)}")
    manifest = await wait(client, status_url)
    assert manifest["requiresAccessToken"] is True
    assert manifest["transactionTime"].endswith("+00:00")
    assert "$export?" in manifest["request"] and "_type=Patient" in manifest["request"]
    assert [(o["type"], o["count"]) for o in manifest["output"]] == [("Patient", 1)]
    assert manifest["error"] == []
    assert "deleted" not in manifest  # only _since exports list deletions


async def test_a_type_with_nothing_to_export_has_no_file(client: httpx.AsyncClient):
    code, _ = tag()
    manifest = await wait(client, await kick_off(client, _type="Patient", _typeFilter=f"Patient?{tagged(code)}"))
    assert manifest["output"] == []


async def test_type_filter_selects_by_search(client: httpx.AsyncClient):
    code, meta = tag()
    await patient_with_observations(client, meta, n=4)  # 2 final, 2 preliminary
    lines = await export(client, _type="Observation", _typeFilter=f"Observation?{tagged(code)}&status=final")
    assert [o["status"] for o in lines["Observation"]] == ["final", "final"]


async def test_type_filters_of_one_type_are_alternatives(client: httpx.AsyncClient):
    code, meta = tag()
    await patient_with_observations(client, meta, n=4)
    filters = [f"Observation?{tagged(code)}&status=final", f"Observation?{tagged(code)}&status=preliminary"]
    res = await client.get(
        "$export", params=[("_type", "Observation"), *[("_typeFilter", f) for f in filters]], headers=ASYNC
    )
    lines = await download(client, await wait(client, res.headers["Content-Location"]))
    assert sorted(o["status"] for o in lines["Observation"]) == ["final", "final", "preliminary", "preliminary"]


async def test_type_filter_with_a_result_parameter_is_400(client: httpx.AsyncClient):
    res = await client.get("$export", params={"_typeFilter": "Observation?_count=5"}, headers=ASYNC)
    assert res.status_code == 400


async def test_type_filter_with_an_unknown_parameter_is_400(client: httpx.AsyncClient):
    res = await client.get("$export", params={"_typeFilter": "Observation?colour=red"}, headers=ASYNC)
    assert res.status_code == 400


async def test_since_exports_only_what_changed_at_or_after_it(client: httpx.AsyncClient):
    code, meta = tag()
    old = await create(client, {"resourceType": "Patient", "meta": meta, "gender": "male"})
    first = await wait(client, await kick_off(client, _type="Patient", _typeFilter=f"Patient?{tagged(code)}"))
    new = await create(client, {"resourceType": "Patient", "meta": meta, "gender": "female"})
    since = first["transactionTime"]  # the next export continues where the last ended
    lines = await export(client, _type="Patient", _since=since, _typeFilter=f"Patient?{tagged(code)}")
    assert [p["id"] for p in lines["Patient"]] == [new]
    assert old != new


async def test_since_export_lists_deletions_made_after_it(client: httpx.AsyncClient):
    _, meta = tag()
    gone = await create(client, {"resourceType": "Patient", "meta": meta})
    first = await wait(client, await kick_off(client, _type="Patient", _elements="id"))
    assert (await client.delete(f"Patient/{gone}")).status_code in (200, 204)
    manifest = await wait(client, await kick_off(client, _type="Patient", _since=first["transactionTime"]))
    deleted = await download(client, manifest, "deleted")
    urls = [e["request"]["url"] for b in deleted["Bundle"] for e in b["entry"]]
    assert urls == [f"Patient/{gone}"]
    assert all(b["type"] == "transaction" for b in deleted["Bundle"])
    assert all(e["request"]["method"] == "DELETE" for b in deleted["Bundle"] for e in b["entry"])


async def test_elements_keep_the_mandatory_ones_and_tag_subsetted(client: httpx.AsyncClient):
    code, meta = tag()
    await patient_with_observations(client, meta, n=1)
    lines = await export(
        client, _type="Observation", _typeFilter=f"Observation?{tagged(code)}", _elements="Observation.subject"
    )
    (obs,) = lines["Observation"]
    assert set(obs) == {"resourceType", "id", "meta", "status", "code", "subject"}
    assert any(t["code"] == "SUBSETTED" for t in obs["meta"]["tag"])


async def test_output_format_other_than_ndjson_is_400(client: httpx.AsyncClient):
    res = await client.get("$export", params={"_outputFormat": "text/csv"}, headers=ASYNC)
    assert res.status_code == 400


@pytest.mark.parametrize("fmt", ["application/fhir+ndjson", "application/ndjson", "ndjson"])
async def test_output_formats_of_ndjson_are_accepted(client: httpx.AsyncClient, fmt: str):
    res = await client.get("$export", params={"_outputFormat": fmt, "_type": "Patient"}, headers=ASYNC)
    assert res.status_code == 202
    await client.delete(res.headers["Content-Location"])  # no job left running


async def test_unknown_parameter_is_400_unless_lenient(client: httpx.AsyncClient):
    res = await client.get("$export", params={"_colour": "red"}, headers=ASYNC)
    assert res.status_code == 400
    lenient = {**ASYNC, "Prefer": "respond-async, handling=lenient"}
    res = await client.get("$export", params={"_colour": "red", "_type": "Patient"}, headers=lenient)
    assert res.status_code == 202
    await client.delete(res.headers["Content-Location"])  # no job left running


async def test_unknown_type_is_400(client: httpx.AsyncClient):
    res = await client.get("$export", params={"_type": "Unicorn"}, headers=ASYNC)
    assert res.status_code == 400


async def test_download_is_gzip_encoded_when_accepted(client: httpx.AsyncClient):
    code, meta = tag()
    await patient_with_observations(client, meta, n=2)
    manifest = await wait(
        client, await kick_off(client, _type="Observation", _typeFilter=f"Observation?{tagged(code)}")
    )
    url = manifest["output"][0]["url"]
    res = await client.get(url, headers={"Accept-Encoding": "gzip"})
    assert res.headers["Content-Encoding"] == "gzip"
    assert res.headers["Content-Type"].startswith("application/fhir+ndjson")
    assert len(res.content.splitlines()) == 2  # httpx decoded it
    async with client.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as raw:
        body = b"".join([chunk async for chunk in raw.aiter_raw()])
    assert len(gzip.decompress(body).splitlines()) == 2


async def test_patient_level_export_holds_compartments_only(client: httpx.AsyncClient):
    code, meta = tag()
    pid = await patient_with_observations(client, meta, n=2)
    await create(  # about no patient: not in any Patient compartment
        client, {"resourceType": "Observation", "meta": meta, "status": "final", "code": {"text": "lone"}}
    )
    lines = await export(client, "Patient/$export", _type="Observation", _typeFilter=f"Observation?{tagged(code)}")
    assert {o["subject"]["reference"] for o in lines["Observation"]} == {f"Patient/{pid}"}
    assert len(lines["Observation"]) == 2


async def test_patient_level_export_of_a_type_outside_the_compartment_is_400(client: httpx.AsyncClient):
    res = await client.get("Patient/$export", params={"_type": "Medication"}, headers=ASYNC)
    assert res.status_code == 400


async def test_post_kick_off_takes_parameters_with_patient(client: httpx.AsyncClient):
    code, meta = tag()
    a = await patient_with_observations(client, meta, n=1)
    await patient_with_observations(client, meta, n=1)
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueString": "Patient,Observation"},
            {"name": "patient", "valueReference": {"reference": f"Patient/{a}"}},
        ],
    }
    res = await client.post("Patient/$export", json=body, headers=ASYNC)
    assert res.status_code == 202, res.text
    lines = await download(client, await wait(client, res.headers["Content-Location"]))
    assert [p["id"] for p in lines["Patient"]] == [a]
    assert [o["subject"]["reference"] for o in lines["Observation"]] == [f"Patient/{a}"]
    assert code


async def test_group_export_follows_active_members_only(client: httpx.AsyncClient):
    _, meta = tag()
    member = await patient_with_observations(client, meta, n=1)
    inactive = await patient_with_observations(client, meta, n=1)
    await patient_with_observations(client, meta, n=1)  # not in the group
    group = await create(
        client,
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [
                {"entity": {"reference": f"Patient/{member}"}},
                {"entity": {"reference": f"Patient/{inactive}"}, "inactive": True},
            ],
        },
    )
    lines = await export(client, f"Group/{group}/$export", _type="Patient,Observation")
    assert [p["id"] for p in lines["Patient"]] == [member]
    assert [o["subject"]["reference"] for o in lines["Observation"]] == [f"Patient/{member}"]


async def test_group_export_of_an_unknown_group_is_404(client: httpx.AsyncClient):
    res = await client.get("Group/no-such-group/$export", headers=ASYNC)
    assert res.status_code == 404


async def test_the_capability_statement_lists_export_at_each_level(client: httpx.AsyncClient):
    rest = (await client.get("metadata")).json()["rest"][0]
    bulk = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
    assert {"name": "export", "definition": bulk + "export"} in rest["operation"]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert {"name": "export", "definition": bulk + "patient-export"} in by_type["Patient"]["operation"]
    assert {"name": "export", "definition": bulk + "group-export"} in by_type["Group"]["operation"]


async def test_post_kick_off_with_a_body_that_is_not_parameters_is_400(client: httpx.AsyncClient):
    res = await client.post("$export", json={"resourceType": "Patient"}, headers=ASYNC)
    assert res.status_code == 400


async def test_patient_parameter_at_system_level_is_400(client: httpx.AsyncClient):
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "patient", "valueReference": {"reference": "Patient/x"}}],
    }
    res = await client.post("$export", json=body, headers=ASYNC)
    assert res.status_code == 400


async def test_include_associated_data_other_than_latest_provenance_is_400_unless_lenient(client: httpx.AsyncClient):
    params = {"includeAssociatedData": "RelevantProvenanceResources", "_type": "Patient"}
    assert (await client.get("$export", params=params, headers=ASYNC)).status_code == 400
    lenient = {**ASYNC, "Prefer": "respond-async, handling=lenient"}
    res = await client.get("$export", params=params, headers=lenient)
    assert res.status_code == 202
    await client.delete(res.headers["Content-Location"])


def _provenance(target: str) -> dict:
    return {
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "recorded": "2024-01-01T00:00:00Z",
        "agent": [{"who": {"display": "the lab"}}],
    }


async def test_latest_provenance_of_each_exported_resource_is_included(client: httpx.AsyncClient):
    code, meta = tag()
    pid = await create(client, {"resourceType": "Patient", "meta": meta})
    observations = []
    for tagged_meta in (meta, meta, None):  # the third is not exported
        body = {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"}}
        body["subject"] = {"reference": f"Patient/{pid}"}
        if tagged_meta:
            body["meta"] = tagged_meta
        observations.append(await create(client, body))
    first, second, other = observations
    await create(client, _provenance(f"Observation/{first}"))  # superseded by the next
    latest_first = await create(client, _provenance(f"Observation/{first}"))
    latest_second = await create(client, _provenance(f"Observation/{second}"))
    await create(client, _provenance(f"Observation/{other}"))
    lines = await export(
        client,
        _type="Observation",
        _typeFilter=f"Observation?{tagged(code)}",
        includeAssociatedData="LatestProvenanceResources",
    )
    assert {o["id"] for o in lines["Observation"]} == {first, second}
    assert sorted(p["id"] for p in lines["Provenance"]) == sorted([latest_first, latest_second])


async def test_every_exported_types_line_count_equals_its_summary_count(client: httpx.AsyncClient):
    _, meta = tag()
    await patient_with_observations(client, meta, n=2)
    manifest = await wait(client, await kick_off(client))  # every type
    counts: dict[str, int] = {}
    for item in manifest["output"]:
        counts[item["type"]] = counts.get(item["type"], 0) + item["count"]
    assert {"Patient", "Observation"} <= set(counts)
    for rtype, exported in counts.items():
        if rtype == "AuditEvent":  # its search reads the audit trail (rest/audit_search.py), not stored resources
            continue
        total = (await client.get(rtype, params={"_summary": "count"})).json()["total"]
        assert exported == total, rtype
