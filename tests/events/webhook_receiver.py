"""A real webhook receiver on loopback for the delivery tests: an HTTP server in a thread
that records every request and answers what the test says. Stopping it makes the port
refuse connections (the endpoint is down); starting it again serves the same URL."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic()
    status: int  # what we answered


class Receiver:
    """`answer(received) -> status` decides each answer (200 by default)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answer: Callable[[Received], int] = lambda _r: 200
        self.delay = 0.0  # seconds before answering
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.start()
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                got = Received(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.monotonic(),
                    0,
                )
                if receiver.delay:
                    time.sleep(receiver.delay)
                got.status = receiver.answer(got)
                with receiver._lock:
                    receiver.requests.append(got)
                self.send_response(got.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_PUT = do_DELETE = do_PATCH = _any

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def received(self, *, ok_only: bool = False) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if not ok_only or 200 <= r.status < 300]

    async def wait_for(self, count: int, *, ok_only: bool = True, seconds: float = 20.0) -> list[Received]:
        """At least `count` requests (answered 2xx when ok_only), waiting up to `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            got = self.received(ok_only=ok_only)
            if len(got) >= count:
                return got
            await asyncio.sleep(0.02)
        raise AssertionError(f"expected {count} requests, got {len(self.received(ok_only=ok_only))}")
