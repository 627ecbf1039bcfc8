"""`ehr import`: Bundles and NDJSON through the store, resumable, with a failure report."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from headless_ehr.auth.principal import SYSTEM
from headless_ehr.bulk.importer import Importer, find_sources


def ndjson(path: Path, resources: list[dict | str]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in resources) + "\n")
    return path


def tagged_patients(tag: str, n: int, with_ids: bool = False) -> list[dict]:
    out = []
    for i in range(n):
        p = {"resourceType": "Patient", "meta": {"tag": [{"system": "urn:import-test", "code": tag}]}}
        if with_ids:
            p["id"] = f"{tag}-{i}"
        out.append(p)
    return out


async def count_tagged(client, tag: str) -> int:
    res = await client.get(f"/Patient?_tag=urn:import-test|{tag}&_total=accurate&_count=0")
    return res.json()["total"]


@pytest.fixture
def importer(app):
    return lambda **kw: Importer(app.state.pool, app.state.store, SYSTEM, **kw)


async def test_ndjson_lines_are_created_and_searchable(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    source = ndjson(tmp_path / "patients.ndjson", tagged_patients(tag, 25))
    report = await importer(batch_size=10).run([source])
    assert report.resources == 25 and not report.failures
    assert await count_tagged(client, tag) == 25


async def test_ndjson_with_ids_updates_existing_resources(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    source = ndjson(tmp_path / "a.ndjson", tagged_patients(tag, 5, with_ids=True))
    await importer().run([source])
    changed = [{**p, "active": True} for p in tagged_patients(tag, 5, with_ids=True)]
    report = await importer().run([ndjson(tmp_path / "b.ndjson", changed)])
    assert report.resources == 5
    res = (await client.get(f"/Patient/{tag}-3")).json()
    assert res["active"] is True and res["meta"]["versionId"] == "2"


async def test_bad_lines_are_reported_and_the_rest_loaded(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    good = tagged_patients(tag, 3)
    lines = [good[0], "{not json", good[1], {"resourceType": "Patient", "gender": "robot"}, good[2]]
    report = await importer().run([ndjson(tmp_path / "mixed.ndjson", lines)])
    assert report.resources == 3
    assert sorted(f.unit for f in report.failures) == ["line 2", "line 4"]
    assert "gender" in next(f.message for f in report.failures if f.unit == "line 4")
    assert await count_tagged(client, tag) == 3


async def test_interrupted_import_resumes_without_duplicates(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    source = ndjson(tmp_path / "big.ndjson", tagged_patients(tag, 50))
    calls = {"n": 0}

    class Crash(BaseException):  # like Ctrl-C or the process dying: nothing catches it
        pass

    def crash_after_two_batches(_bytes: int, resources: int) -> None:
        if resources:
            calls["n"] += 1
            if calls["n"] == 2:
                raise Crash

    with pytest.raises(Crash):
        await importer(batch_size=10, on_progress=crash_after_two_batches).run([source])
    assert await count_tagged(client, tag) == 20
    report = await importer(batch_size=10).run([source])
    assert report.resources == 30
    assert await count_tagged(client, tag) == 50
    again = await importer(batch_size=10).run([source])
    assert again.resources == 0 and again.files_skipped == 1  # a finished file is not loaded twice


async def test_transaction_bundle_file_loads_with_references(importer, client, shared_fhir, tmp_path):
    original = next(p for p in sorted((shared_fhir / "synthea").glob("*.json")) if not p.name.startswith("0-"))
    source = tmp_path / original.name
    shutil.copy(original, source)
    entries = json.loads(source.read_bytes())["entry"]
    report = await importer().run(find_sources([str(tmp_path)]))
    assert report.resources == len(entries) and not report.failures
    patient_id = next(e["resource"]["id"] for e in entries if e["resource"]["resourceType"] == "Patient")
    assert patient_id  # Synthea's own ids are replaced, so look the patient up by identifier
    identifier = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "Patient")["identifier"][0]
    found = (await client.get(f"/Patient?identifier={identifier['system']}|{identifier['value']}")).json()
    new_id = found["entry"][0]["resource"]["id"]
    obs = (await client.get(f"/Observation?subject=Patient/{new_id}&_count=1&_total=accurate")).json()
    expected = sum(1 for e in entries if e["resource"]["resourceType"] == "Observation")
    assert obs["total"] == expected


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        find_sources([str(tmp_path / "nope")])


async def test_a_file_that_cannot_be_finished_is_reported_and_the_others_still_load(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    sources = [ndjson(tmp_path / f"{i}.ndjson", tagged_patients(tag, 4)) for i in range(5)]
    sources[2].unlink()  # gone between listing and loading
    report = await importer(concurrency=2).run(sources)
    assert [(f.source, f.unit) for f in report.failures] == [(str(sources[2]), "file")]
    assert "not finished" in report.failures[0].message
    assert report.files == 5 and report.resources == 16
    assert await count_tagged(client, tag) == 16


def test_worker_processes_that_die_without_a_report_fail_the_run():
    from types import SimpleNamespace

    from headless_ehr.bulk.cli import _lost_workers

    workers = [SimpleNamespace(exitcode=0), SimpleNamespace(exitcode=-9)]
    assert _lost_workers(workers, 0) == []
    [failure] = _lost_workers(workers, 1)
    assert "1 worker process(es)" in failure.message and "-9" in failure.message
