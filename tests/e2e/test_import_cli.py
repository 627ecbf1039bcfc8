"""`ehr import` as a command: exit status, summary and resumability across runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid


def run_import(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    env["EHR_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "headless_ehr.cli", "import", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_command_loads_a_folder_and_reports(database_url, tmp_path):
    tag = uuid.uuid4().hex
    lines = [json.dumps({"resourceType": "Patient", "meta": {"tag": [{"code": tag}]}}) for _ in range(12)]
    (tmp_path / "one.ndjson").write_text("\n".join(lines))
    (tmp_path / "bad.ndjson").write_text('{"resourceType": "Patient", "birthDate": "yesterday"}\n')
    result = run_import(database_url, str(tmp_path), "--batch-size", "5")
    assert result.returncode == 1  # one resource failed
    assert "2 files: 1 loaded, 1 with failures; 12 resources loaded, 1 failed" in result.stderr
    assert "birthDate" in result.stderr
    second = run_import(database_url, str(tmp_path / "one.ndjson"))
    assert second.returncode == 0
    assert "1 file: 0 loaded, 1 already imported, 0 with failures; 0 resources loaded" in second.stderr


def test_a_rerun_retries_the_failed_file_instead_of_calling_it_imported(database_url, tmp_path):
    (tmp_path / "bad.ndjson").write_text('{"resourceType": "Patient", "birthDate": "yesterday"}\n')
    first = run_import(database_url, str(tmp_path))
    again = run_import(database_url, str(tmp_path))
    assert (first.returncode, again.returncode) == (1, 1)
    assert "1 file: 0 loaded, 0 with failures" not in again.stderr
    assert "1 file: 0 loaded, 1 with failures; 0 resources loaded, 1 failed" in again.stderr


def test_import_of_missing_path_fails_cleanly(database_url, tmp_path):
    result = run_import(database_url, str(tmp_path / "absent"))
    assert result.returncode == 2
    assert "no such file" in result.stderr


def test_worker_processes_share_the_files_and_load_each_exactly_once(database_url, tmp_path):
    import asyncio

    import asyncpg

    tags = [uuid.uuid4().hex for _ in range(9)]
    for i, tag in enumerate(tags):
        lines = [json.dumps({"resourceType": "Patient", "meta": {"tag": [{"code": tag}]}}) for _ in range(i + 1)]
        (tmp_path / f"{i}.ndjson").write_text("\n".join(lines))
    result = run_import(database_url, str(tmp_path), "--processes", "2", "--concurrency", "2")
    assert result.returncode == 0, result.stderr

    async def counts() -> list[int]:
        conn = await asyncpg.connect(database_url)
        try:
            return [
                await conn.fetchval(
                    "SELECT count(*) FROM search_token"
                    " WHERE resource_type = 'Patient' AND param = '_tag' AND code = $1",
                    tag,
                )
                for tag in tags
            ]
        finally:
            await conn.close()

    assert asyncio.run(counts()) == [i + 1 for i in range(len(tags))]
    assert "│ 9 " in result.stderr.replace("\u2502", "│")  # the summary counts every file once


EXAMPLES_SHARING_IDS = [
    "Bundle-101.json",  # Observation r1..r17, also in Bundle-ghp
    "Bundle-ghp.json",  # and o1..o13, also in Bundle-report
    "Bundle-report.json",
    "Bundle-f001.json",  # ServiceRequest/req, also in Bundle-micro
    "Bundle-micro.json",
    "Bundle-3ad0687e-f477-468c-afd5-fcc2bf897819.json",  # Location/2
    "Location-2.json",
    "Bundle-terminologies.json",  # NamingSystem/example
    "NamingSystem-example.json",
]


def test_spec_examples_sharing_ids_load_in_parallel_without_conflicts(database_url, shared_fhir, tmp_path):
    import shutil

    for name in EXAMPLES_SHARING_IDS:
        shutil.copy(shared_fhir / "examples-r4" / name, tmp_path / name)
    result = run_import(database_url, str(tmp_path), "--processes", "3", "--concurrency", "3")
    assert "already exists" not in result.stderr
    assert result.returncode == 0, result.stderr[-2000:]
    assert "9 files: 9 loaded, 0 with failures" in result.stderr
