"""$export (FHIR Bulk Data Access 2.0.0, http://hl7.org/fhir/uv/bulkdata/): kick-off,
status, cancellation and file download.

Kick-off (`[base]/$export`, `[base]/Patient/$export`, `[base]/Group/[id]/$export`, GET
or POST Parameters) checks every parameter and the caller's rights now, stores the job
(bulk/export_jobs.py) with its snapshot instant, and answers 202 with the status URL.
The job runs on whichever node claims it (bulk/export_worker.py). The status URL
answers 202 with X-Progress while it runs (429 when polled sooner than Retry-After
asks), then 200 with the manifest; DELETE on it cancels the job and removes its files.
Only the kick-off's client, user and patient context may poll, download or cancel.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from ...auth.principal import Principal
from ...bulk import export_files, export_jobs
from ...bulk.caller import caller_json, owner_of
from ...bulk.export_jobs import ExportSpec, Job
from ...bulk.export_s3 import S3Bucket
from ...bulk.export_worker import remove_files
from ...bulk.snapshot import check_type_filter
from ...fhir import json as fhir_json
from ...fhir.definitions import definitions
from ...fhir.outcome import FhirError
from ...search.compartment import member_types
from ...store.repository import format_instant
from ..context import principal_of, store_of
from ..instants import parse_instant
from ..jobs import accepted, owned, too_many_open
from ..negotiation import prefer, read_resource
from ..responses import base_url, http_date, info_outcome, json_response

OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
NDJSON = "application/fhir+ndjson"
RETRY_AFTER = 1  # seconds a client is asked to wait between status requests
POLL_SLACK = 0.8  # a poll this fraction of Retry-After after the last is still in time
_KNOWN = frozenset({"_outputFormat", "_since", "_type", "_typeFilter", "_elements", "patient", "includeAssociatedData"})
_CHUNK = 1024 * 1024
ASSOCIATED_DATA = frozenset({"LatestProvenanceResources"})  # includeAssociatedData values supported
MAX_TYPE_FILTERS = 100  # each is a search compiled into every page query of its type
STATUS_OPERATION = "$export-poll-status"
DOWNLOAD_OPERATION = "$export-download"


# ---- kick-off -------------------------------------------------------------------------------


async def _parameters(request: Request) -> list[tuple[str, str]]:
    """The kick-off's parameters as (name, value): the query (GET) or a Parameters body (POST)."""
    if request.method == "GET":
        return list(request.query_params.multi_items())
    body = await read_resource(request, request.app.state.settings.max_body_bytes)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FhirError.of(400, "invalid", "a POST $export takes a Parameters resource")
    pairs = [(k, v) for k, v in request.query_params.multi_items() if k == "_format"]
    for i, p in enumerate(body.get("parameter") or []):
        name = p.get("name") if isinstance(p, dict) else None
        values = [v for k, v in p.items() if k.startswith("value")] if isinstance(p, dict) else []
        if not isinstance(name, str) or len(values) != 1:
            raise FhirError.of(
                400, "invalid", "each parameter needs a name and one value", f"Parameters.parameter[{i}]"
            )
        value = values[0]
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            value = value["reference"]
        if not isinstance(value, str):
            raise FhirError.of(400, "invalid", f"parameter {name[:100]} must be a string, code, instant or reference")
        pairs.append((name, value))
    return pairs


def _values(pairs: list[tuple[str, str]], name: str) -> list[str]:
    """Every value of name, comma lists split."""
    return [v.strip() for n, raw in pairs if n == name for v in raw.split(",") if v.strip()]


def _types(request: Request, level: str, requested: list[str]) -> list[str]:
    """The types to export: those asked for (every one the level holds when none), each
    one the caller may search; 403 for one asked for that it may not."""
    principal = principal_of(request)
    known = definitions().resource_types
    unknown = [t for t in requested if t not in known]
    if unknown:
        raise FhirError.of(400, "invalid", f"_type: unknown resource type(s): {', '.join(unknown)[:300]}")
    members = set(member_types("Patient")) if level != "system" or _patient_context(principal) else known
    outside = [t for t in requested if t not in members]
    if outside and level == "system":  # a patient's token: its own record, never the shared catalogue
        raise FhirError.of(403, "forbidden", f"a patient's token exports its own record only, not {outside[0]}")
    if outside:
        raise FhirError.of(400, "invalid", f"_type: not in the Patient compartment: {', '.join(outside)[:300]}")
    for t in requested:
        principal.require("search", t)
    candidates = list(dict.fromkeys(requested)) or sorted(members)
    types = [t for t in candidates if principal.allows("search", t)]
    if not types:
        raise FhirError.of(403, "forbidden", "not permitted to export any resource type")
    return types


def _patient_context(principal: Principal) -> bool:
    """A patient's token (a patient launch context, or a user who is a Patient): its
    export holds the types of its own compartment only, as a Patient-level one would."""
    return bool(principal.patient) or (principal.fhir_user or "").split("/")[-2:-1] == ["Patient"]


def _elements(values: list[str]) -> dict[str, list[str]]:
    """_elements as type -> element names ("*": every type)."""
    out: dict[str, list[str]] = {}
    for value in values:
        rtype, _, element = value.rpartition(".")
        if rtype and rtype not in definitions().resource_types:
            raise FhirError.of(400, "invalid", f"_elements: unknown resource type in '{value[:100]}'")
        if not element.isidentifier():
            raise FhirError.of(400, "invalid", f"_elements: '{value[:100]}' is not [type.]element")
        out.setdefault(rtype or "*", []).append(element)
    return out


def _patients(values: list[str]) -> list[str] | None:
    if not values:
        return None
    ids = []
    for ref in values:
        rtype, _, rid = ref.rstrip("/").rpartition("/")
        if rtype.rpartition("/")[2] != "Patient" or not rid:
            raise FhirError.of(400, "invalid", f"patient: '{ref[:100]}' is not a Patient reference")
        ids.append(rid)
    return ids


async def _group_members(request: Request, group_id: str) -> list[str]:
    """The Patients a Group lists as active members (Group.member.inactive not true); 404
    for a Group the caller may not read."""
    stored = await store_of(request).read(principal_of(request), "Group", group_id)
    resource = fhir_json.loads(stored.content)
    ids = []
    for member in resource.get("member") or []:
        if member.get("inactive") is True:
            continue
        ref = (member.get("entity") or {}).get("reference") or ""
        rtype, _, rid = ref.rpartition("/")
        if rtype.rpartition("/")[2] == "Patient" and rid:
            ids.append(rid)
    return ids


async def kick_off(request: Request, level: str, group_id: str | None = None) -> Response:
    """Accept an export: 202 with the status URL in Content-Location."""
    lenient = prefer(request).get("handling") == "lenient"
    if "respond-async" not in (request.headers.get("prefer") or ""):
        raise FhirError.of(400, "invalid", "$export is asynchronous: send the header 'Prefer: respond-async'")
    pairs = await _parameters(request)
    unknown = sorted({n for n, _ in pairs if n not in _KNOWN and n != "_format"})
    if unknown and not lenient:
        raise FhirError.of(400, "not-supported", f"$export does not take: {', '.join(unknown)[:300]}")
    for fmt in _values(pairs, "_outputFormat"):
        if fmt not in OUTPUT_FORMATS:
            raise FhirError.of(400, "not-supported", f"_outputFormat '{fmt[:100]}': only {NDJSON} is produced")
    associated = set(_values(pairs, "includeAssociatedData"))
    if associated - ASSOCIATED_DATA and not lenient:
        unsupported = ", ".join(sorted(associated - ASSOCIATED_DATA))[:300]
        raise FhirError.of(
            400, "not-supported", f"includeAssociatedData: only LatestProvenanceResources, not {unsupported}"
        )
    principal = principal_of(request)
    provenance = "LatestProvenanceResources" in associated
    if provenance:
        principal.require("search", "Provenance")
    local_base = base_url(request)
    types = _types(request, level, _values(pairs, "_type"))
    since = None
    if _values(pairs, "_since"):
        since = format_instant(parse_instant("_since", _values(pairs, "_since")[-1]))
    filters: dict[str, list[str]] = {}
    type_filters = [v for n, v in pairs if n == "_typeFilter"]
    if len(type_filters) > MAX_TYPE_FILTERS:
        raise FhirError.of(400, "too-costly", f"at most {MAX_TYPE_FILTERS} _typeFilter values")
    for value in type_filters:
        rtype, _, query = value.partition("?")
        if rtype not in definitions().resource_types:
            raise FhirError.of(400, "invalid", f"_typeFilter '{value[:100]}' must be [type]?[search parameters]")
        if rtype in types:
            check_type_filter(principal, rtype, query, local_base)
            filters.setdefault(rtype, []).append(query)
    patients = _patients([v for n, v in pairs if n == "patient"])
    if patients is not None and level == "system":
        raise FhirError.of(400, "invalid", "patient is a parameter of Patient- and Group-level exports")
    if level == "group":
        assert group_id is not None
        members = await _group_members(request, group_id)
        patients = members if patients is None else [p for p in members if p in set(patients)]
    elements = _elements(_values(pairs, "_elements"))
    spec = ExportSpec(level, types, since, filters, elements, patients, group_id, provenance)
    # the kick-off URL as the client sent it (behind a proxy too): the manifest's `request`
    asked = f"{local_base}/{request.path_params.get('path', '')}" + (
        f"?{request.url.query}" if request.url.query else ""
    )
    job = await export_jobs.create(
        request.app.state.bulk_pool, owner_of(principal), caller_json(principal), asked, local_base, spec
    )
    if job is None:
        raise too_many_open("exports", export_jobs.MAX_OPEN_JOBS, 60)
    request.app.state.exports.wake()
    return accepted(request, "export", job.id, f"{local_base}/{STATUS_OPERATION}?_jobId={job.id}")


# ---- status, cancellation, download --------------------------------------------------------


async def _own_job(request: Request) -> Job:
    """The job named by _jobId, if the caller kicked it off (404 otherwise: nothing is told)."""
    job_id = request.query_params.get("_jobId") or ""
    return owned(request, await export_jobs.get(request.app.state.bulk_pool, job_id), "export job", job_id)


def _progress_text(job: Job) -> str:
    progress = job.progress
    written = progress.get("written", 0)
    if job.status == "accepted" or "stream" not in progress:
        return "queued"
    types = job.spec.types
    at = min(progress["stream"], len(types))
    return f"{written} resources written; {at} of {len(types)} types done"


async def _manifest(request: Request, job: Job) -> dict[str, Any]:
    """The completed job's manifest: download URLs of this server (a token needed), or
    pre-signed URLs of the S3 bucket valid until the job expires (none needed)."""
    base = base_url(request)
    bucket: S3Bucket | None = request.app.state.bulk_bucket
    files = await export_jobs.files_of(request.app.state.bulk_pool, job.id)
    urls: dict[str, str] = {}
    if bucket is not None:
        assert job.expires_at is not None
        seconds = (job.expires_at - datetime.now(UTC)).total_seconds()
        for f in files:
            urls[f["name"]] = await asyncio.to_thread(bucket.url, job.id, f["name"], seconds)

    def entry(f: dict[str, Any]) -> dict[str, Any]:
        url = urls.get(f["name"]) or f"{base}/{DOWNLOAD_OPERATION}?_jobId={job.id}&file={quote(f['name'])}"
        return {"type": f["type"] if f["kind"] != "deleted" else "Bundle", "url": url, "count": f["count"]}

    manifest: dict[str, Any] = {
        "transactionTime": format_instant(job.transaction_time),
        "request": job.request,
        "requiresAccessToken": bucket is None,
        "output": [entry(f) for f in files if f["kind"] != "deleted"],
        "error": [],
    }
    if job.spec.since is not None:
        manifest["deleted"] = [entry(f) for f in files if f["kind"] == "deleted"]
    return manifest


async def status(request: Request) -> Response:
    """202 with X-Progress while the job runs, 200 with the manifest when it is done."""
    job = await _own_job(request)
    if job.status == "completed":
        headers = {"Expires": _http_date(job)} if job.expires_at else {}
        return json_response(request, await _manifest(request, job), 200, headers)
    if job.status == "failed":
        raise FhirError.of(500, "exception", job.error or "the export failed")
    wait = {"Retry-After": str(RETRY_AFTER)}
    if not await export_jobs.polled(request.app.state.bulk_pool, job.id, RETRY_AFTER * POLL_SLACK):
        raise FhirError(429, FhirError.of(429, "throttled", "polled too often: wait Retry-After").issues, wait)
    return Response(status_code=202, headers={**wait, "X-Progress": _progress_text(job)})


def _http_date(job: Job) -> str:
    assert job.expires_at is not None
    return http_date(job.expires_at)


async def cancel(request: Request) -> Response:
    """DELETE on the status URL: stop the job and remove its files (202)."""
    job = await _own_job(request)
    await export_jobs.cancel(request.app.state.bulk_pool, job.id)
    await remove_files(request.app.state.settings, request.app.state.bulk_bucket, job.id)
    return json_response(request, info_outcome(f"export {job.id} cancelled; its files are removed"), 202)


async def download(request: Request) -> Response:
    """One output file of a completed job, gzip-encoded when the client accepts it."""
    job = await _own_job(request)
    name = request.query_params.get("file") or ""
    files = await export_jobs.files_of(request.app.state.bulk_pool, job.id) if job.status == "completed" else []
    listed = {f["name"] for f in files}
    path = export_files.download_path(request.app.state.settings.data_dir, job.id, name)
    if name not in listed or path is None or not path.is_file():
        raise FhirError.of(404, "not-found", f"export {job.id} has no file '{name[:100]}'")
    headers = {"Vary": "Accept-Encoding", "Cache-Control": "private, no-store"}
    if "gzip" in (request.headers.get("accept-encoding") or "").lower():
        headers["Content-Encoding"] = "gzip"
        return StreamingResponse(_gzipped(path), media_type=NDJSON, headers=headers)
    return FileResponse(path, media_type=NDJSON, headers=headers)


async def _gzipped(path: Path) -> AsyncIterator[bytes]:
    """The file as one gzip stream, read and compressed a chunk at a time off the event loop."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, _CHUNK):
            out = await asyncio.to_thread(compressor.compress, chunk)
            if out:
                yield out
        yield compressor.flush()
    finally:
        f.close()
