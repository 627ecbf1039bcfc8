"""`Date` is never earlier than `Last-Modified` (RFC 9110 §8.8.2.1), on a real `ehr serve`.

uvicorn's own Date header is refreshed once a second, so a fresh write's Last-Modified
could be a second ahead of it; the server now sets Date itself when it answers.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import httpx

from .test_serve import Server, _env


def test_date_is_never_earlier_than_last_modified_on_creates(database_url: str):
    server = Server(_env(EHR_DATABASE_URL=database_url))
    try:
        server.wait_ready()
        with httpx.Client(timeout=10, headers=server.headers()) as http:
            # a Date refreshed once a second lags behind the clock for part of every
            # second: writing for 2.5 s hits that part unless the phase is very unlucky
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                res = http.post(
                    f"{server.base}/Patient",
                    json={"resourceType": "Patient"},
                    headers={"Content-Type": "application/fhir+json"},
                )
                assert res.status_code == 201
                dates = res.headers.get_list("date")
                assert len(dates) == 1, dates
                assert parsedate_to_datetime(dates[0]) >= parsedate_to_datetime(res.headers["last-modified"])
            other = http.get(f"{server.base}/metadata")
            assert len(other.headers.get_list("date")) == 1
    finally:
        server.stop()
