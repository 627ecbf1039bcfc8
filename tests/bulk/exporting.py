"""The Bulk Data client flow for the export tests: kick-off, poll, download."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


async def kick_off(client: httpx.AsyncClient, path: str = "$export", **params: Any) -> str:
    """Start an export; the status URL (asserts 202)."""
    res = await client.get(path, params=params, headers=ASYNC)
    assert res.status_code == 202, res.text
    return res.headers["Content-Location"]


async def wait(client: httpx.AsyncClient, status_url: str, seconds: float = 60) -> dict[str, Any]:
    """Poll as Retry-After asks until the manifest comes (asserts 200)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        res = await client.get(status_url)
        if res.status_code == 200:
            return res.json()
        assert res.status_code == 202, res.text
        await asyncio.sleep(float(res.headers["Retry-After"]))
    raise AssertionError("the export did not finish in time")


async def download(client: httpx.AsyncClient, manifest: dict[str, Any], key: str = "output") -> dict[str, list[Any]]:
    """Every line of every file of the manifest, by type."""
    out: dict[str, list[Any]] = {}
    for item in manifest[key]:
        res = await client.get(item["url"], headers={"Accept": "application/fhir+ndjson"})
        assert res.status_code == 200, res.text
        lines = [orjson.loads(line) for line in res.content.splitlines() if line]
        assert len(lines) == item["count"]
        out.setdefault(item["type"], []).extend(lines)
    return out


async def export(client: httpx.AsyncClient, path: str = "$export", **params: Any) -> dict[str, list[Any]]:
    manifest = await wait(client, await kick_off(client, path, **params))
    return await download(client, manifest)


def tag() -> tuple[str, dict[str, Any]]:
    """A fresh tag code and the meta that carries it."""
    code = uuid.uuid4().hex
    return code, {"tag": [{"system": "urn:export-test", "code": code}]}


async def create(client: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    res = await client.post(resource["resourceType"], json=resource)
    assert res.status_code == 201, res.text
    return res.json()["id"]


async def patient_with_observations(client: httpx.AsyncClient, meta: dict[str, Any], n: int = 2) -> str:
    pid = await create(client, {"resourceType": "Patient", "meta": meta, "gender": "female"})
    for i in range(n):
        await create(
            client,
            {
                "resourceType": "Observation",
                "meta": meta,
                "status": "final" if i % 2 == 0 else "preliminary",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "valueQuantity": {"value": 60 + i, "unit": "/min"},
            },
        )
    return pid


def tagged(code: str) -> str:
    return f"_tag=urn:export-test|{code}"


def app_of(client: httpx.AsyncClient) -> Any:
    """The app an in-process client talks to."""
    return client._transport.app  # type: ignore[attr-defined]
