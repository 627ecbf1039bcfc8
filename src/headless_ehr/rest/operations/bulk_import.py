"""$import (Bulk Data import, the Parameters form HAPI FHIR/Smile and Azure take): kick-off,
status, cancellation and the per-line error NDJSON.

Kick-off (`POST [base]/$import`, `Prefer: respond-async`) takes a Parameters resource:
`inputFormat` (NDJSON), `inputSource`, `storageDetail` (its `type`: https, file or s3), and
one `input` per source with parts `type` (a resource type) and `url`. It needs a system-level
client allowed to create and update each input's type, checks every url now (its scheme,
a file's place), stores the job (bulk/import_jobs.py) and answers 202 with the status URL.
Inputs load on whichever nodes claim them (bulk/import_worker.py). The status URL answers
202 with X-Progress while they do (429 when polled sooner than Retry-After asks), then 200
with a manifest: what each input loaded, and an OperationOutcome NDJSON of its line errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ...bulk import import_jobs
from ...bulk.caller import caller_json, owner_of
from ...bulk.import_jobs import Input, Job
from ...bulk.import_sources import STORAGE_TYPES, SourceError, check, kind_of
from ...fhir import json as fhir_json
from ...fhir.definitions import definitions
from ...fhir.outcome import FhirError, Issue, operation_outcome
from ...store.repository import format_instant
from ..context import principal_of
from ..jobs import accepted, owned, too_many_open
from ..negotiation import prefer, read_resource
from ..responses import base_url, http_date, info_outcome, json_response
from .export import NDJSON, OUTPUT_FORMATS, POLL_SLACK, RETRY_AFTER

STATUS_OPERATION = "$import-poll-status"
ERRORS_OPERATION = "$import-errors"
MAX_INPUTS = 1000  # inputs per kick-off
_KNOWN = frozenset({"inputFormat", "inputSource", "storageDetail", "input", "mode"})  # mode: Azure's, any value
_INPUT_PARTS = frozenset({"type", "url", "etag"})  # etag: Azure's, not checked
_STORAGE_KIND = {"https": "http", "http": "http", "file": "file", "s3": "s3"}


# ---- kick-off -------------------------------------------------------------------------------


def _value(param: dict[str, Any], where: str) -> str:
    values = [v for k, v in param.items() if k.startswith("value")]
    if len(values) != 1 or not isinstance(values[0], str):
        raise FhirError.of(400, "invalid", f"{param.get('name')!s:.100} needs one string value", where)
    return values[0]


def _parts(param: dict[str, Any], where: str, known: frozenset[str], lenient: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for j, part in enumerate(param.get("part") or []):
        name = part.get("name") if isinstance(part, dict) else None
        at = f"{where}.part[{j}]"
        if not isinstance(name, str):
            raise FhirError.of(400, "invalid", "each part needs a name", at)
        if name not in known:
            if lenient:
                continue
            raise FhirError.of(400, "not-supported", f"$import does not take the part {name[:100]}", at)
        out[name] = _value(part, at)
    return out


def _request_of(body: Any, lenient: bool) -> tuple[dict[str, Any], list[tuple[str, str]], list[str]]:
    """(params, inputs as (type, url), each input's FHIRPath) of a kick-off's Parameters, checked."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FhirError.of(400, "invalid", "$import takes a Parameters resource")
    params: dict[str, Any] = {}
    inputs: list[tuple[str, str]] = []
    places: list[str] = []
    for i, p in enumerate(body.get("parameter") or []):
        where = f"Parameters.parameter[{i}]"
        name = p.get("name") if isinstance(p, dict) else None
        if not isinstance(name, str):
            raise FhirError.of(400, "invalid", "each parameter needs a name", where)
        if name not in _KNOWN:
            if lenient:
                continue
            raise FhirError.of(400, "not-supported", f"$import does not take: {name[:100]}", where)
        if name == "input":
            parts = _parts(p, where, _INPUT_PARTS, lenient)
            if "type" not in parts or "url" not in parts:
                raise FhirError.of(400, "required", "each input needs a type and a url", where)
            if parts["type"] not in definitions().resource_types:
                raise FhirError.of(400, "invalid", f"input type '{parts['type'][:100]}' is not a resource type", where)
            inputs.append((parts["type"], parts["url"]))
            places.append(where)
        elif name == "storageDetail":
            params["storageDetail"] = _parts(p, where, frozenset({"type"}), True).get("type")
        else:
            params[name] = _value(p, where)
    if not inputs:
        raise FhirError.of(400, "required", "$import needs at least one input (parts type and url)")
    if len(inputs) > MAX_INPUTS:
        raise FhirError.of(400, "too-costly", f"at most {MAX_INPUTS} inputs per $import")
    if params.get("inputFormat", NDJSON) not in OUTPUT_FORMATS:
        raise FhirError.of(400, "not-supported", f"inputFormat '{params['inputFormat'][:100]}': only {NDJSON} is read")
    storage = params.get("storageDetail")
    if storage is not None and storage not in STORAGE_TYPES:
        raise FhirError.of(400, "not-supported", f"storageDetail type '{storage[:100]}': https, file or s3 only")
    return params, inputs, places


async def kick_off(request: Request) -> Response:
    """Accept an import: 202 with the status URL in Content-Location."""
    if "respond-async" not in (request.headers.get("prefer") or ""):
        raise FhirError.of(400, "invalid", "$import is asynchronous: send the header 'Prefer: respond-async'")
    principal = principal_of(request)
    principal.require_system("$import")
    settings = request.app.state.settings
    body = await read_resource(request, settings.max_body_bytes)
    params, inputs, places = _request_of(body, prefer(request).get("handling") == "lenient")
    for rtype in dict.fromkeys(t for t, _ in inputs):  # an import creates and updates
        principal.require("create", rtype)
        principal.require("update", rtype)
    storage = params.get("storageDetail")
    for (_, url), where in zip(inputs, places, strict=True):
        try:
            check(url, settings.data_dir, request.app.state.bulk_bucket)
            if storage is not None and _STORAGE_KIND[storage] != kind_of(url):
                raise SourceError(f"input url '{url[:200]}' is not of storageDetail type {storage}")
        except SourceError as exc:
            raise FhirError.of(400, "invalid", str(exc), f"{where}.part.where(name = 'url')") from None
    local_base = base_url(request)
    asked = f"{local_base}/$import"
    job = await import_jobs.create(
        request.app.state.bulk_pool, owner_of(principal), caller_json(principal), asked, params, inputs
    )
    if job is None:
        raise too_many_open("imports", import_jobs.MAX_OPEN_JOBS, 60)
    request.app.state.imports.wake()
    return accepted(request, "import", job.id, f"{local_base}/{STATUS_OPERATION}?_jobId={job.id}")


# ---- status, cancellation, errors ----------------------------------------------------------


async def _own_job(request: Request) -> Job:
    """The job named by _jobId, if the caller kicked it off (404 otherwise: nothing is told)."""
    job_id = request.query_params.get("_jobId") or ""
    return owned(request, await import_jobs.get(request.app.state.bulk_pool, job_id), "import job", job_id)


def _progress_text(job: Job, inputs: list[Input]) -> str:
    if job.status == "accepted":
        return "queued"
    done = sum(1 for i in inputs if i.status != "pending")
    loaded = sum(i.loaded for i in inputs)
    failed = sum(i.failed for i in inputs)
    return f"{loaded} resources loaded, {failed} lines in error; {done} of {len(inputs)} inputs done"


def _manifest(request: Request, job: Job, inputs: list[Input]) -> dict[str, Any]:
    base = base_url(request)

    def errors(i: Input) -> dict[str, Any]:
        url = f"{base}/{ERRORS_OPERATION}?_jobId={job.id}&input={i.seq}"
        return {"type": "OperationOutcome", "inputUrl": i.url, "url": url, "count": _error_count(i)}

    return {
        "transactionTime": format_instant(job.transaction_time),
        "request": job.request,
        "requiresAccessToken": True,
        "output": [{"type": i.type, "inputUrl": i.url, "count": i.loaded} for i in inputs],
        "error": [errors(i) for i in inputs if i.failed or i.error is not None],
    }


async def status(request: Request) -> Response:
    """202 with X-Progress while inputs load, 200 with the manifest when every one is done."""
    job = await _own_job(request)
    db = request.app.state.bulk_pool
    inputs = await import_jobs.inputs_of(db, job.id)
    if job.status == "completed":
        headers = {"Expires": http_date(job.expires_at)} if job.expires_at else {}
        return json_response(request, _manifest(request, job, inputs), 200, headers)
    wait = {"Retry-After": str(RETRY_AFTER)}
    if not await import_jobs.polled(db, job.id, RETRY_AFTER * POLL_SLACK):
        raise FhirError(429, FhirError.of(429, "throttled", "polled too often: wait Retry-After").issues, wait)
    return Response(status_code=202, headers={**wait, "X-Progress": _progress_text(job, inputs)})


async def cancel(request: Request) -> Response:
    """DELETE on the status URL: inputs stop at their next unit; what was loaded stays (202)."""
    job = await _own_job(request)
    await import_jobs.cancel(request.app.state.bulk_pool, job.id)
    message = f"import {job.id} cancelled; resources it loaded before stay"
    return json_response(request, info_outcome(message), 202)


def _error_count(item: Input) -> int:
    """Lines of an input's error file: its own error, the line errors kept, and a last line
    saying how many more there were when the job's limit cut them."""
    return (item.error is not None) + item.kept + (item.failed > item.kept)


def _outcome_line(where: str, message: str) -> bytes:
    outcome = operation_outcome([Issue("error", "processing", f"{where}: {message}")])
    return fhir_json.dumps(outcome) + b"\n"


async def errors(request: Request) -> Response:
    """One input's errors as OperationOutcome NDJSON: why the input could not be read, then
    each line in error, from a server-side cursor."""
    job = await _own_job(request)
    raw = request.query_params.get("input") or ""
    inputs = await import_jobs.inputs_of(request.app.state.bulk_pool, job.id) if job.status == "completed" else []
    found = [i for i in inputs if raw.isdigit() and i.seq == int(raw)]
    if not found:
        raise FhirError.of(404, "not-found", f"import {job.id} has no error file for input '{raw[:20]}'")
    item = found[0]
    headers = {"Cache-Control": "private, no-store"}
    return StreamingResponse(
        _error_lines(request.app.state.bulk_pool, job.id, item), media_type=NDJSON, headers=headers
    )


async def _error_lines(db: asyncpg.Pool, job_id: str, item: Input) -> AsyncIterator[bytes]:
    if item.error is not None:
        yield _outcome_line(item.url, item.error)
    async with db.acquire() as conn, conn.transaction(readonly=True):
        chunk: list[bytes] = []
        async for row in import_jobs.error_lines(conn, job_id, item.seq):
            chunk.append(_outcome_line(f"{item.url} line {row['line']}", row["message"]))
            if len(chunk) >= 500:
                yield b"".join(chunk)
                chunk = []
        if chunk:
            yield b"".join(chunk)
    if item.failed > item.kept:
        more = f"{item.failed - item.kept} more lines in error, not kept (EHR_BULK_IMPORT_MAX_ERRORS per job)"
        yield _outcome_line(item.url, more)
