"""`ehr import` run again: a batch Bundle is never loaded twice, and what failed is retried."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from headless_ehr.auth.principal import SYSTEM, Principal
from headless_ehr.bulk.importer import Importer

PATIENTS_ONLY = Principal.from_scopes("patients-only", "system/*.rs system/Patient.cud")


class Crash(BaseException):  # like Ctrl-C or the process dying: nothing catches it
    pass


@pytest.fixture
def importer(app):
    return lambda principal=SYSTEM, **kw: Importer(app.state.pool, app.state.store, principal, **kw)


def tag_of(tag: str) -> dict:
    return {"tag": [{"system": "urn:import-rerun", "code": tag}]}


async def count(client, rtype: str, tag: str) -> int:
    res = await client.get(f"/{rtype}?_tag=urn:import-rerun|{tag}&_total=accurate&_count=0")
    return res.json()["total"]


def batch_bundle(path: Path, tag: str, patients: int, observations: int = 0) -> Path:
    entries = [
        {"resource": {"resourceType": "Patient", "meta": tag_of(tag)}, "request": {"method": "POST", "url": "Patient"}}
        for _ in range(patients)
    ]
    entries += [
        {
            "resource": {
                "resourceType": "Observation",
                "meta": tag_of(tag),
                "status": "final",
                "code": {"text": "weight"},
            },
            "request": {"method": "POST", "url": "Observation"},
        }
        for _ in range(observations)
    ]
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries}))
    return path


async def test_a_batch_bundle_interrupted_midway_is_loaded_once(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    source = batch_bundle(tmp_path / "batch.json", tag, 6)
    checks = {"n": 0}

    class CrashAtTheFourthEntry(Principal):
        def require(self, interaction: str, resource_type: str) -> None:
            checks["n"] += 1
            if checks["n"] == 4:
                raise Crash

    with pytest.raises(Crash):
        await importer(CrashAtTheFourthEntry(subject="crashing")).run([source])
    assert checks["n"] == 4
    assert await count(client, "Patient", tag) == 0  # the three entries before the crash did not commit alone
    report = await importer().run([source])
    assert report.resources == 6 and not report.failures
    assert await count(client, "Patient", tag) == 6


async def test_a_batch_bundle_that_committed_before_a_crash_is_not_loaded_again(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    source = batch_bundle(tmp_path / "batch.json", tag, 5)

    def crash_after_the_unit(_bytes: int, resources: int) -> None:
        if resources:
            raise Crash

    with pytest.raises(Crash):
        await importer(on_progress=crash_after_the_unit).run([source])
    report = await importer().run([source])
    assert report.resources == 0 and not report.failures
    assert await count(client, "Patient", tag) == 5


async def test_a_rerun_retries_the_ndjson_lines_that_failed_and_only_those(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    patient = {"resourceType": "Patient", "meta": tag_of(tag)}
    observation = {"resourceType": "Observation", "meta": tag_of(tag), "status": "final", "code": {"text": "x"}}
    lines = [patient, observation, patient, observation, patient]
    source = tmp_path / "mixed.ndjson"
    source.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    first = await importer(PATIENTS_ONLY, batch_size=2).run([source])
    assert sorted(f.unit for f in first.failures) == ["line 2", "line 4"]
    assert (first.files_failed, first.resources, first.resources_failed) == (1, 3, 2)
    second = await importer(batch_size=2).run([source])
    assert (second.files_loaded, second.resources, second.failures) == (1, 2, [])
    assert await count(client, "Patient", tag) == 3 and await count(client, "Observation", tag) == 2
    third = await importer().run([source])
    assert (third.files_skipped, third.resources) == (1, 0)


async def test_a_rerun_retries_the_batch_entries_that_failed_and_only_those(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    source = batch_bundle(tmp_path / "batch.json", tag, 2, observations=1)
    first = await importer(PATIENTS_ONLY).run([source])
    assert [f.unit for f in first.failures] == ["entry 2"] and first.resources == 2
    second = await importer().run([source])
    assert second.resources == 1 and not second.failures
    assert await count(client, "Patient", tag) == 2 and await count(client, "Observation", tag) == 1


async def test_a_rerun_retries_a_transaction_bundle_that_failed(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "meta": tag_of(tag),
                    "generalPractitioner": [{"reference": f"Practitioner?identifier=urn:rerun|{tag}"}],
                },
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }
    source = tmp_path / "tx.json"
    source.write_text(json.dumps(bundle))
    first = await importer().run([source])
    assert [f.unit for f in first.failures] == ["file"] and first.files_failed == 1
    assert first.resources_failed == 1
    practitioner = {"resourceType": "Practitioner", "identifier": [{"system": "urn:rerun", "value": tag}]}
    assert (await client.post("/Practitioner", json=practitioner)).status_code == 201
    second = await importer().run([source])
    assert (second.files_loaded, second.resources, second.failures) == (1, 1, [])
    assert await count(client, "Patient", tag) == 1


def test_the_summary_says_what_counts_files_and_what_counts_resources():
    from headless_ehr.bulk.importer import ImportReport

    report = ImportReport(files=12, files_loaded=10, files_failed=2, resources=60053, resources_failed=3)
    assert report.summary() == "12 files: 10 loaded, 2 with failures; 60,053 resources loaded, 3 failed"
    report.files_skipped = 1
    assert "1 already imported" in report.summary()


async def test_a_batch_bundle_with_deletes_is_loaded_without_failures(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    gone = (await client.post("/Patient", json={"resourceType": "Patient", "meta": tag_of(tag)})).json()["id"]
    source = batch_bundle(tmp_path / "batch.json", tag, 1)
    bundle = json.loads(source.read_text())
    bundle["entry"] += [
        {"request": {"method": "DELETE", "url": f"Patient/{gone}"}},  # 204 No Content is a success
        {"request": {"method": "DELETE", "url": "Patient/never-existed"}},
    ]
    source.write_text(json.dumps(bundle))
    first = await importer().run([source])
    assert not first.failures
    second = await importer().run([source])  # done: nothing to retry
    assert not second.failures and second.resources == 0
    assert await count(client, "Patient", tag) == 1


async def test_ndjson_units_hold_at_most_the_bundle_limit_in_lines(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    line = json.dumps({"resourceType": "Patient", "meta": tag_of(tag)})
    source = tmp_path / "patients.ndjson"
    source.write_text("\n".join([line] * 10) + "\n")
    run = importer(batch_size=500, max_bundle_bytes=len(line) * 3)  # units follow the bytes held too
    units = []
    original = run._ndjson_unit

    async def counted(file_run, batch, retry):
        units.append(len(batch))
        await original(file_run, batch, retry)

    run._ndjson_unit = counted
    report = await run.run([source])
    assert not report.failures and report.resources == 10
    assert max(units) <= 3 and sum(units) == 10
