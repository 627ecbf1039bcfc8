"""$import inputs read from the deployment's S3 bucket (EHR_BULK_S3_URL; moto's S3 server)."""

from __future__ import annotations

import gzip
from typing import Any

import orjson

from tests.bulk.importing import ASYNC, errors, parameters, run_import, tagged_patients


def _ndjson(resources: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in resources)


async def test_an_object_of_the_bucket_is_loaded(node: Any, s3: Any):
    api = await node(bulk_s3_url=f"s3://{s3.bucket}/exports")
    query, patients = tagged_patients(4)
    s3.put_object(Bucket=s3.bucket, Key="incoming/p.ndjson.gz", Body=gzip.compress(_ndjson(patients)))
    manifest = await run_import(api, ("Patient", f"s3://{s3.bucket}/incoming/p.ndjson.gz"), storage="s3")
    assert manifest["output"][0]["count"] == 4
    assert (await api.get(f"Patient?{query}&_summary=count")).json()["total"] == 4


async def test_another_bucket_is_400(node: Any, s3: Any):
    api = await node(bulk_s3_url=f"s3://{s3.bucket}")
    res = await api.post("$import", json=parameters(("Patient", "s3://someone-elses/p.ndjson")), headers=ASYNC)
    assert res.status_code == 400
    assert s3.bucket in res.text


async def test_a_missing_object_fails_that_input(node: Any, s3: Any):
    api = await node(bulk_s3_url=f"s3://{s3.bucket}")
    manifest = await run_import(api, ("Patient", f"s3://{s3.bucket}/nothing-here.ndjson"))
    [message] = await errors(api, manifest)
    assert "could not be read" in message
