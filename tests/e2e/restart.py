"""What the restart tests of the asynchronous flows ($export, $import, async requests) share:
kill a real `ehr serve` with SIGKILL, start it again on the same data dir, and poll a status URL."""

from __future__ import annotations

import os
import signal
import time

import httpx

from tests.e2e.test_serve import Server


def kill(server: Server) -> None:
    """No shutdown hook runs: the claim's lease must run out (or be taken over) for the work to go on."""
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=10)


def restarted(server: Server, data_dir: str) -> Server:
    """A new server with the same environment (the same admin client: the owner of the jobs) and data dir."""
    again = Server(server.env, "--data-dir", data_dir)
    try:
        again.wait_ready()
    except BaseException:
        again.stop()
        raise
    return again


def final_answer(server: Server, status_url: str, seconds: float) -> httpx.Response:
    """The status URL's first answer other than 202, polled as its Retry-After asks."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        res = httpx.get(status_url, headers=server.headers(), timeout=10)
        if res.status_code != 202:
            return res
        time.sleep(float(res.headers["Retry-After"]))
    raise AssertionError(f"{status_url} did not complete after the restart")
