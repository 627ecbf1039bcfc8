"""Security review: malformed input to /oauth and /admin is a clear 4xx, never a 500."""

from __future__ import annotations

import base64
import itertools

import orjson
import pytest

from .forge import ASSERTION_TYPE, b64
from .oauth_support import basic, http


@pytest.fixture
async def admin(app) -> dict[str, str]:
    creds = orjson.loads((app.state.settings.data_dir / "admin-client.json").read_bytes())
    async with http(app) as c:
        r = await c.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "scope": "system/*.*"},
            headers=basic(creds["client_id"], creds["client_secret"]),
        )
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def test_basic_credentials_holding_a_nul_are_invalid_client(app):
    async with http(app) as c:
        r = await c.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": "Basic " + base64.b64encode(b"a\x00:b").decode()},
        )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


async def test_an_assertion_whose_iss_holds_a_nul_is_invalid_client(app):
    header, claims = b64({"alg": "ES384"}), b64({"iss": "a\x00"})
    assertion = f"{header}.{claims}.c2ln"
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
    async with http(app) as c:
        r = await c.post("/oauth/token", data=form)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


async def test_an_admin_body_holding_a_nul_is_a_400(app, admin):
    async with http(app, headers=admin) as c:
        r = await c.post(
            "/admin/clients", content=b'{"name": "a\\u0000b"}', headers={"Content-Type": "application/json"}
        )
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_an_admin_account_name_holding_a_nul_is_not_found(app, admin, method):
    async with http(app, headers=admin) as c:
        for path in ("/admin/users/x%00", "/admin/clients/x%00"):
            r = await c.request(method, path)
            assert r.status_code == 404, (path, r.text)


BODIES = [
    b"",
    b"\xff\xfe",
    b"grant_type=%ff%fe",
    b"grant_type=authorization_code&code=x&code=y",
    b"grant_type=refresh_token&refresh_token=abc&client_id=x&scope=patient/Obs.rs?%ff",
    b"grant_type=client_credentials&scope=" + b"system/*.rs+" * 200,
    b"grant_type=client_credentials&client_assertion_type=" + ASSERTION_TYPE.encode() + b"&client_assertion=e30.e30.x",
    b"token=" + b"." * 5000,
]
CONTENT_TYPES = ["application/x-www-form-urlencoded", "application/json", "multipart/form-data; boundary=x", ""]
AUTHORIZATIONS = [None, "Basic", "Basic !!!", "Basic eA==", "Bearer x"]


async def test_odd_requests_to_the_oauth_endpoints_are_never_a_500(app):
    failures = []
    async with http(app) as c:
        for path in ("/oauth/token", "/oauth/introspect", "/oauth/revoke", "/oauth/authorize"):
            for body, content_type, authorization in itertools.product(BODIES, CONTENT_TYPES, AUTHORIZATIONS):
                headers = {"Content-Type": content_type} if content_type else {}
                if authorization:
                    headers["Authorization"] = authorization
                r = await c.post(path, content=body, headers=headers)
                if r.status_code >= 500:
                    failures.append((path, body[:60], content_type, authorization, r.status_code))
    assert not failures


@pytest.mark.parametrize(
    "uri", ["javascript:alert(document.cookie)//", "data:text/html,<script>1</script>", "file:///etc/passwd"]
)
async def test_a_redirect_uri_a_browser_would_run_is_refused(app, admin, uri):
    async with http(app, headers=admin) as c:
        r = await c.post("/admin/clients", json={"name": "x", "public": True, "redirect_uris": [uri]})
    assert r.status_code == 400 and "redirect_uri" in r.text
