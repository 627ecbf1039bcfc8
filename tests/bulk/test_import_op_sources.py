"""$import inputs read over http(s) (a loopback server), bounded and never redirected."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest

from tests.bulk.exporting import app_of
from tests.bulk.importing import errors, kick_off, parameters, run_import, tagged_patients, wait


class _Files(ThreadingHTTPServer):
    """path -> (status, headers, body) answered as given; a path in `slow` waits that many seconds first."""

    daemon_threads = True
    routes: dict[str, tuple[int, dict[str, str], bytes]]
    slow: dict[str, float]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(self.server.slow.get(self.path, 0))  # type: ignore[attr-defined]
        status, headers, body = self.server.routes.get(self.path, (404, {}, b"not here"))  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def files() -> Iterator[Any]:
    """A loopback HTTP server: files.routes[path] = (status, headers, body); files.url(path)."""
    server = _Files(("127.0.0.1", 0), _Handler)
    server.routes = {}
    server.slow = {}
    server.url = lambda path: f"http://127.0.0.1:{server.server_address[1]}{path}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _ndjson(resources: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in resources)


async def _count(client: httpx.AsyncClient, query: str) -> int:
    return (await client.get(f"Patient?{query}&_summary=count")).json()["total"]


async def test_an_http_input_is_loaded(client: httpx.AsyncClient, files: Any):
    query, patients = tagged_patients(5)
    files.routes["/p.ndjson"] = (200, {"Content-Type": "application/fhir+ndjson"}, _ndjson(patients))
    manifest = await run_import(client, ("Patient", files.url("/p.ndjson")), storage="https")
    assert manifest["output"][0]["count"] == 5
    assert await _count(client, query) == 5


async def test_a_gzip_encoded_response_is_read(client: httpx.AsyncClient, files: Any):
    _query, patients = tagged_patients(3)
    files.routes["/p.ndjson"] = (200, {"Content-Encoding": "gzip"}, gzip.compress(_ndjson(patients)))
    manifest = await run_import(client, ("Patient", files.url("/p.ndjson")))
    assert manifest["output"][0]["count"] == 3


async def test_a_gzip_file_is_read(client: httpx.AsyncClient, files: Any):
    query, patients = tagged_patients(3)
    files.routes["/p.ndjson.gz"] = (200, {"Content-Type": "application/gzip"}, gzip.compress(_ndjson(patients)))
    manifest = await run_import(client, ("Patient", files.url("/p.ndjson.gz")))
    assert manifest["output"][0]["count"] == 3
    assert await _count(client, query) == 3


async def test_a_redirect_is_not_followed_and_the_input_is_in_error(client: httpx.AsyncClient, files: Any):
    _, patients = tagged_patients(1)
    files.routes["/p.ndjson"] = (200, {}, _ndjson(patients))
    files.routes["/moved"] = (302, {"Location": files.url("/p.ndjson")}, b"")
    manifest = await run_import(client, ("Patient", files.url("/moved")))
    assert manifest["output"][0]["count"] == 0
    [message] = await errors(client, manifest)
    assert "redirect" in message and "/p.ndjson" in message


async def test_an_http_error_fails_that_input_only(client: httpx.AsyncClient, files: Any):
    _query, patients = tagged_patients(2)
    files.routes["/p.ndjson"] = (200, {}, _ndjson(patients))
    manifest = await run_import(client, ("Patient", files.url("/gone")), ("Patient", files.url("/p.ndjson")))
    assert [o["count"] for o in manifest["output"]] == [0, 2]
    [message] = await errors(client, manifest)
    assert "HTTP 404" in message
    assert manifest["error"][0]["inputUrl"] == files.url("/gone")


async def test_an_input_larger_than_the_limit_is_refused_unloaded(node: Any, files: Any):
    api = await node(bulk_import_max_bytes=2048)
    query, patients = tagged_patients(40)
    files.routes["/big.ndjson"] = (200, {}, _ndjson(patients))
    manifest = await run_import(api, ("Patient", files.url("/big.ndjson")))
    [message] = await errors(api, manifest)
    assert "EHR_BULK_IMPORT_MAX_BYTES" in message
    assert await _count(api, query) == 0


async def test_an_unreachable_host_fails_the_input(client: httpx.AsyncClient):
    manifest = await run_import(client, ("Patient", "http://127.0.0.1:9/p.ndjson"))
    [message] = await errors(client, manifest)
    assert "could not be read" in message


async def test_an_input_slower_than_the_fetch_limit_fails(node: Any, files: Any):
    api = await node(bulk_import_fetch_seconds=1)
    _, patients = tagged_patients(1)
    files.routes["/slow.ndjson"] = (200, {}, _ndjson(patients))
    files.slow["/slow.ndjson"] = 3
    manifest = await run_import(api, ("Patient", files.url("/slow.ndjson")))
    [message] = await errors(api, manifest)
    assert "EHR_BULK_IMPORT_FETCH_SECONDS" in message


async def test_a_job_cancelled_mid_download_frees_its_nodes_slot(node: Any, files: Any):
    api = await node(bulk_import_concurrency=1)
    files.routes["/stuck.ndjson"] = (200, {}, b"")
    files.slow["/stuck.ndjson"] = 60
    stuck = await kick_off(api, parameters(("Patient", files.url("/stuck.ndjson"))))
    pool = app_of(api).state.bulk_pool
    for _ in range(100):  # until the node has claimed it (and is waiting on the download)
        if await pool.fetchval("SELECT lease_token IS NOT NULL FROM bulk_import_input"):
            break
        await asyncio.sleep(0.05)
    assert (await api.delete(stuck)).status_code == 202
    _, patients = tagged_patients(1)
    files.routes["/p.ndjson"] = (200, {}, _ndjson(patients))
    manifest = await wait(api, await kick_off(api, parameters(("Patient", files.url("/p.ndjson")))), seconds=20)
    assert manifest["output"][0]["count"] == 1
