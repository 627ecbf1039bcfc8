"""$export into an S3-compatible bucket (EHR_BULK_S3_URL): pre-signed downloads, no token.

The bucket is moto's S3 server on a local port (the `s3` fixture, tests/bulk/conftest.py),
reached over HTTP by boto3 and by the client as any S3-compatible server (MinIO, …) would be.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.bulk.exporting import app_of, create, kick_off, wait


def _keys(s3: Any) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3.bucket).get("Contents", ()))


async def test_files_go_to_the_bucket_and_download_by_presigned_url_without_a_token(node: Any, s3: Any):
    api = await node(bulk_s3_url=f"s3://{s3.bucket}/exports", bulk_file_bytes=600)
    ids = {await create(api, {"resourceType": "Patient", "gender": "female"}) for _ in range(6)}
    status_url = await kick_off(api, _type="Patient")
    manifest = await wait(api, status_url)
    assert manifest["requiresAccessToken"] is False
    assert len(manifest["output"]) > 1  # cut by bytes, each part an object
    job_id = status_url.rsplit("=", 1)[1]
    names = [item["url"].split("?")[0].rsplit("/", 1)[1] for item in manifest["output"]]
    assert _keys(s3) == sorted(f"exports/{job_id}/{name}" for name in names)
    assert [name.split("-")[1] for name in names] == [str(i) for i in range(1, len(names) + 1)]
    found = set()
    async with httpx.AsyncClient() as anyone:  # no Authorization header
        for item in manifest["output"]:
            res = await anyone.get(item["url"])
            assert res.status_code == 200
            lines = [orjson.loads(line) for line in res.content.splitlines()]
            assert len(lines) == item["count"]
            found |= {p["id"] for p in lines}
    assert found == ids
    data_dir = app_of(api).state.settings.data_dir
    assert not list((data_dir / "bulk" / job_id).glob("*.ndjson"))  # nothing left on the node's disk


async def test_cancel_removes_the_objects(node: Any, s3: Any):
    api = await node(bulk_s3_url=f"s3://{s3.bucket}")
    await create(api, {"resourceType": "Patient"})
    status_url = await kick_off(api, _type="Patient")
    await wait(api, status_url)
    assert _keys(s3)
    assert (await api.delete(status_url)).status_code == 202
    assert _keys(s3) == []
