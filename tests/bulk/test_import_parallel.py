"""`ehr import` loading files at once: an id in several files is created once and updated by the others."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from headless_ehr.auth.principal import SYSTEM
from headless_ehr.bulk.importer import Importer


@pytest.fixture
def importer(app):
    return lambda **kw: Importer(app.state.pool, app.state.store, SYSTEM, **kw)


def patients(tag: str, n: int, family: str) -> list[dict]:
    return [{"resourceType": "Patient", "id": f"{tag}-{i}", "name": [{"family": family}]} for i in range(n)]


async def test_an_id_in_files_loaded_at_once_is_created_once_and_updated_by_the_others(importer, client, tmp_path):
    tag = uuid.uuid4().hex[:16]
    sources = []
    for k in range(6):
        path = tmp_path / f"{k}.ndjson"
        path.write_text("\n".join(json.dumps(p) for p in patients(tag, 60, f"f{k}")))
        sources.append(path)
    report = await importer(concurrency=6, batch_size=20).run(sources)
    assert report.failures == [] and report.resources == 6 * 60
    for i in (0, 31, 59):
        history = (await client.get(f"/Patient/{tag}-{i}/_history")).json()
        assert history["total"] == 6  # one create and five updates, whichever file came first


async def test_two_importers_sharing_the_ids_of_a_collection_bundle_never_fail(importer, client, tmp_path):
    tag = uuid.uuid4().hex[:16]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for path in (first, second):
        entries = [{"resource": p} for p in patients(tag, 80, path.stem)]  # differ, so the second is a version
        path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}))
    reports = await asyncio.gather(importer().run([first]), importer().run([second]))
    assert [r.failures for r in reports] == [[], []]
    assert sum(r.resources for r in reports) == 160
    res = (await client.get(f"/Patient/{tag}-7")).json()
    assert res["meta"]["versionId"] == "2"


async def test_the_same_id_twice_in_one_unit_is_a_create_then_an_update(importer, client, tmp_path):
    tag = uuid.uuid4().hex[:16]
    lines = [*patients(tag, 1, "first"), *patients(tag, 1, "second")]
    source = tmp_path / "twice.ndjson"
    source.write_text("\n".join(json.dumps(p) for p in lines))
    report = await importer().run([source])
    assert report.failures == [] and report.resources == 2
    res = (await client.get(f"/Patient/{tag}-0")).json()
    assert res["name"][0]["family"] == "second" and res["meta"]["versionId"] == "2"
