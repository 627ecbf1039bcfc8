"""Helpers of the OAuth tests: HTTP clients of the app at its origin, registered clients and users."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

from headless_ehr.auth import accounts

ORIGIN = "http://testserver"
FHIR = ORIGIN + "/fhir"
TOKEN_URL = ORIGIN + "/oauth/token"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def http(app: Any, **kwargs: Any) -> httpx.AsyncClient:
    """A client of the app at its origin (not the FHIR base), like a browser or an app."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(asgi: Any) -> Iterator[str]:
    """An ASGI app served over real HTTP on a free loopback port (a client's JWKS, an
    external issuer), for the server to fetch from; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the local HTTP server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def confidential_client(db: Any, scopes: list[str], redirect_uris: list[str] | None = None) -> tuple[str, str]:
    client, secret = await accounts.create_client(db, unique("app"), redirect_uris or [], scopes)
    assert secret is not None
    return client.client_id, secret


async def system_token(app: Any, db: Any, scope: str = "system/*.rs") -> str:
    client_id, secret = await confidential_client(db, [scope])
    async with http(app) as c:
        r = await c.post(
            "/oauth/token", data={"grant_type": "client_credentials", "scope": scope}, headers=basic(client_id, secret)
        )
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


class Form:
    """An HTML form as a browser sees it: where it posts and its controls."""

    def __init__(self, action: str, method: str) -> None:
        self.action, self.method = action, method
        self.inputs: list[dict[str, str]] = []
        self.labels: dict[str, str] = {}  # for= id -> label text

    def names(self) -> set[str]:
        return {i["name"] for i in self.inputs if "name" in i}

    def fill(self, values: dict[str, str] | None = None, button: str | None = None, **choose: list[str] | str) -> str:
        """The urlencoded body a browser submits: hidden and checked controls, typed values,
        the radio/checkbox choices given (name -> values) and the clicked button (value)."""
        values = values or {}
        pairs: list[tuple[str, str]] = []
        for control in self.inputs:
            name, kind = control.get("name"), control.get("type", "text")
            if name is None:
                continue
            if kind in ("checkbox", "radio"):
                if name in choose:
                    picked = choose[name] if isinstance(choose[name], list) else [choose[name]]
                    if control.get("value") in picked:
                        pairs.append((name, control.get("value", "on")))
                elif "checked" in control:
                    pairs.append((name, control.get("value", "on")))
            elif kind == "submit":
                if button is not None and control.get("value") == button:
                    pairs.append((name, button))
            else:
                pairs.append((name, values.get(name, control.get("value", ""))))
        from urllib.parse import urlencode

        return urlencode(pairs)


def parse_forms(page: str) -> list[Form]:
    from html.parser import HTMLParser

    forms: list[Form] = []

    class Parser(HTMLParser):
        label_for: str | None = None

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = {k: v if v is not None else "" for k, v in attrs}
            if tag == "form":
                forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
            elif tag in ("input", "button") and forms:
                if tag == "button":
                    a.setdefault("type", "submit")
                forms[-1].inputs.append(a)
            elif tag == "label" and forms:
                self.label_for = a.get("for")
                if self.label_for:
                    forms[-1].labels[self.label_for] = ""

        def handle_endtag(self, tag: str) -> None:
            if tag == "label":
                self.label_for = None

        def handle_data(self, data: str) -> None:
            if self.label_for and forms:
                forms[-1].labels[self.label_for] += data

    Parser().feed(page)
    return forms


async def submit(browser: httpx.AsyncClient, form: Form, body: str) -> httpx.Response:
    return await browser.post(form.action, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
