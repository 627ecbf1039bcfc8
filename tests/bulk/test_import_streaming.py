"""`ehr import` streams its files: NDJSON line by line (through gzip too), Bundles bounded."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import uuid
from pathlib import Path

import pytest

from headless_ehr.auth.principal import SYSTEM
from headless_ehr.bulk.importer import Importer, _open, ndjson_lines, read_bounded
from headless_ehr.config import Settings

MiB = 1024 * 1024


@pytest.fixture
def importer(app):
    return lambda **kw: Importer(app.state.pool, app.state.store, SYSTEM, **kw)


def gzip_of(path: Path, chunk: bytes, times: int) -> Path:
    with gzip.open(path, "wb", compresslevel=1) as out:
        for _ in range(times):
            out.write(chunk)
    return path


def test_ndjson_memory_does_not_grow_with_the_file(tmp_path):
    line = json.dumps({"resourceType": "Patient", "gender": "other", "active": True}).encode() + b"\n"
    source = gzip_of(tmp_path / "big.ndjson.gz", line * 1000, 250)  # ~15 MB once decompressed
    tracemalloc.start()
    try:
        with _open(source) as stream:
            lines = sum(1 for _ in ndjson_lines(stream, 256 * MiB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == 250_000
    assert peak < 2 * MiB


def test_a_bundle_over_the_limit_is_refused_before_it_is_inflated(tmp_path):
    bomb = gzip_of(tmp_path / "bomb.json.gz", b" " * MiB, 64)  # 64 MiB of spaces, ~0.3 MB on disk
    tracemalloc.start()
    try:
        with pytest.raises(Exception, match="EHR_IMPORT_MAX_BUNDLE_BYTES") as caught:
            read_bounded(bomb, 2 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "2,097,152 bytes" in str(caught.value)
    assert peak < 8 * MiB


async def test_a_bundle_file_over_the_limit_is_a_failure_of_that_file_alone(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    big = tmp_path / "big.json"
    patients = [{"resource": {"resourceType": "Patient", "meta": {"tag": [{"code": tag}]}}} for _ in range(200)]
    big.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": patients}))
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"resourceType": "Patient", "meta": {"tag": [{"code": tag}]}}))
    report = await importer(max_bundle_bytes=4096).run([big, small])
    assert [(f.source, f.unit) for f in report.failures] == [(str(big), "file")]
    assert "EHR_IMPORT_MAX_BUNDLE_BYTES" in report.failures[0].message
    assert (report.files_failed, report.files_loaded, report.resources) == (1, 1, 1)


async def test_an_ndjson_file_larger_than_the_bundle_limit_loads_line_by_line(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    line = json.dumps({"resourceType": "Patient", "meta": {"tag": [{"system": "urn:stream", "code": tag}]}})
    source = tmp_path / "many.ndjson.gz"
    source.write_bytes(gzip.compress(("\n".join([line] * 300) + "\n").encode()))
    report = await importer(max_bundle_bytes=4096, batch_size=50).run([source])
    assert report.failures == [] and report.resources == 300
    found = (await client.get(f"/Patient?_tag=urn:stream|{tag}&_total=accurate&_count=0")).json()
    assert found["total"] == 300


async def test_an_ndjson_line_over_the_limit_fails_alone(importer, client, tmp_path):
    tag = uuid.uuid4().hex
    small = {"resourceType": "Patient", "meta": {"tag": [{"code": tag}]}}
    huge = {**small, "name": [{"text": "x" * 10_000}]}
    source = tmp_path / "lines.ndjson"
    source.write_text("\n".join(json.dumps(r) for r in (small, huge, small)) + "\n")
    report = await importer(max_bundle_bytes=4096).run([source])
    assert [f.unit for f in report.failures] == ["line 2"] and report.resources == 2


def test_the_bundle_limit_is_a_setting(monkeypatch):
    monkeypatch.setenv("EHR_IMPORT_MAX_BUNDLE_BYTES", "1000")
    assert Settings.from_env().import_max_bundle_bytes == 1000
    monkeypatch.delenv("EHR_IMPORT_MAX_BUNDLE_BYTES")
    assert Settings.from_env().import_max_bundle_bytes == 256 * MiB


async def test_a_large_ndjson_file_moves_the_progress_bar_as_it_loads(importer, tmp_path):
    source = tmp_path / "steps.ndjson.gz"
    with gzip.open(source, "wt") as out:
        for _ in range(400):
            noise = "".join(uuid.uuid4().hex for _ in range(40))  # so the gzip file stays large
            out.write(json.dumps({"resourceType": "Patient", "name": [{"text": noise}]}) + "\n")
    steps: list[int] = []
    await importer(batch_size=50, on_progress=lambda done, _r: steps.append(done)).run([source])
    assert sum(steps) == source.stat().st_size
    assert len([s for s in steps if s > 0]) > 2  # not all at the end
