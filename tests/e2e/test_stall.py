"""Long work never stalls other requests: while a ~16 MiB transaction runs on one
connection of a real `ehr serve` process, `GET /metadata` and a read on another
connection each answer within 500 ms."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from .test_serve import Server

MAX_LATENCY = 0.5  # seconds
BODY_BYTES = 15 * 1024 * 1024  # under the default 16 MiB body limit


@pytest.fixture
def server(fresh_database: str) -> Iterator[Server]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    env["EHR_DATABASE_URL"] = fresh_database
    env["EHR_RATE_LIMIT_PER_MINUTE"] = "0"  # the probes run at up to 100 a second for as long as the transaction
    running = Server(env)
    try:
        running.wait_ready()
        yield running
    finally:
        assert running.stop() == 0


def _transaction(size: int) -> bytes:
    """A transaction Bundle of about size bytes creating Patients."""
    entries, total, i = [], 0, 0
    while total < size:
        patient = {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:stall", "value": f"{i}-{k}"} for k in range(5)],
            "name": [{"family": f"Family{i}", "given": ["Ann", "Marie"]} for _ in range(4)],
            "address": [{"line": ["1 Main St"], "city": "Town", "postalCode": "1234"} for _ in range(3)],
            "gender": "female",
            "birthDate": "1970-01-01",
        }
        entry = {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": patient,
            "request": {"method": "POST", "url": "Patient"},
        }
        entries.append(entry)
        total += len(orjson.dumps(entry))
        i += 1
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def test_metadata_and_reads_answer_within_500_ms_while_a_16_mib_transaction_runs(server: Server):
    body = _transaction(BODY_BYTES)
    auth = server.headers()
    created = httpx.post(f"{server.base}/Patient", json={"resourceType": "Patient", "gender": "male"}, headers=auth)
    probes = ["/metadata", f"/Patient/{created.json()['id']}"]
    big: dict[str, Any] = {}
    finished = threading.Event()

    def run_transaction() -> None:
        with httpx.Client(timeout=600) as other:
            big["start"] = time.monotonic()
            res = other.post(server.base, content=body, headers={**auth, "Content-Type": "application/fhir+json"})
            big["end"], big["status"] = time.monotonic(), res.status_code
            finished.set()

    in_flight: list[tuple[float, str]] = []  # (latency, path) of probes answered before the transaction
    with httpx.Client(timeout=60, headers=auth) as probe:
        for path in probes:  # the probe connection is open and warm before the big request starts
            assert probe.get(f"{server.base}{path}").status_code == 200
        worker = threading.Thread(target=run_transaction)
        worker.start()
        while not finished.is_set():
            for path in probes:
                start = time.monotonic()
                res = probe.get(f"{server.base}{path}")
                assert res.status_code == 200, res.text
                if not finished.is_set():
                    in_flight.append((time.monotonic() - start, path))
            time.sleep(0.02)
        worker.join()

    assert big["status"] == 200
    # not vacuous: probes of both kinds were answered while the transaction ran
    assert len(in_flight) >= 20, f"only {len(in_flight)} probes in {big['end'] - big['start']:.1f} s"
    assert {path for _, path in in_flight} == set(probes)
    worst = max(in_flight)
    assert worst[0] < MAX_LATENCY, f"{worst[1]} took {worst[0] * 1000:.0f} ms while the transaction ran"
