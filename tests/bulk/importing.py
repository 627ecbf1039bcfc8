"""The $import client flow for the import tests: inputs, kick-off, poll, error files."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.bulk.exporting import ASYNC, app_of, wait

__all__ = ["ASYNC", "errors", "kick_off", "parameters", "run_import", "tagged_patients", "wait", "write_input"]


def parameters(*inputs: tuple[str, str], storage: str | None = None, **extra: str) -> dict[str, Any]:
    """The Parameters of a kick-off: (type, url) inputs, the optional storageDetail type."""
    params: list[dict[str, Any]] = [{"name": "inputFormat", "valueCode": "application/fhir+ndjson"}]
    if storage is not None:
        params.append({"name": "storageDetail", "part": [{"name": "type", "valueCode": storage}]})
    params += [{"name": k, "valueString": v} for k, v in extra.items()]
    for rtype, url in inputs:
        parts = [{"name": "type", "valueCode": rtype}, {"name": "url", "valueUri": url}]
        params.append({"name": "input", "part": parts})
    return {"resourceType": "Parameters", "parameter": params}


async def kick_off(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    """Start an import; the status URL (asserts 202)."""
    res = await client.post("$import", json=body, headers=ASYNC)
    assert res.status_code == 202, res.text
    return res.headers["Content-Location"]


async def run_import(client: httpx.AsyncClient, *inputs: tuple[str, str], **kw: Any) -> dict[str, Any]:
    """Kick off, wait: the manifest."""
    return await wait(client, await kick_off(client, parameters(*inputs, **kw)))


async def errors(client: httpx.AsyncClient, manifest: dict[str, Any]) -> list[str]:
    """Every error line's diagnostics, over every error file of the manifest."""
    out: list[str] = []
    for item in manifest["error"]:
        res = await client.get(item["url"], headers={"Accept": "application/fhir+ndjson"})
        assert res.status_code == 200, res.text
        lines = [orjson.loads(line) for line in res.content.splitlines() if line]
        assert len(lines) == item["count"]
        out += [o["issue"][0]["diagnostics"] for o in lines]
    return out


def write_input(client: httpx.AsyncClient, lines: list[Any], suffix: str = ".ndjson") -> str:
    """An NDJSON file in the app's bulk-import folder; its url (a path relative to the folder)."""
    folder = Path(app_of(client).state.settings.data_dir) / "bulk-import"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}{suffix}"
    data = b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines)
    (folder / name).write_bytes(data)
    return name


def tagged_patients(n: int, with_ids: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """n Patients carrying a fresh tag (and ids of their own when with_ids), and the tag's search."""
    code = uuid.uuid4().hex
    meta = {"tag": [{"system": "urn:import-test", "code": code}]}
    patients = [{"resourceType": "Patient", "meta": meta, "gender": "female"} for _ in range(n)]
    if with_ids:
        for p in patients:
            p["id"] = f"imp-{uuid.uuid4().hex[:20]}"
    return f"_tag=urn:import-test|{code}", patients
