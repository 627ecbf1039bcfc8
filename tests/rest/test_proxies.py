"""The base URL behind reverse proxies: Forwarded / X-Forwarded-* from trusted peers only, Host checks."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest

from headless_ehr.rest.origin import host_allowed, is_trusted, parse_forwarded
from tests.conftest import bearer, mint_token

PATIENT = {"resourceType": "Patient", "name": [{"family": "Proxy"}]}
TRUSTED = ("127.0.0.1", 40000)
UNTRUSTED = ("10.0.0.5", 1234)


def _client(app: object, peer: tuple[str, int]) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=peer)  # type: ignore[arg-type]
    client = httpx.AsyncClient(transport=transport, base_url="http://backend:8080/fhir")
    client.app = app  # type: ignore[attr-defined]
    return client


async def _token_for(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, str]:
    """A token for the base these headers make (a token's audience is the FHIR base
    the client reaches); the public CapabilityStatement names that base."""
    base = (await client.get("/metadata", headers=headers)).json()["implementation"]["url"]
    return bearer(mint_token(client.app, base_url=base))  # type: ignore[attr-defined]


@pytest.fixture
async def trusted(app: object) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(app, TRUSTED) as c:
        yield c


@pytest.fixture
async def untrusted(app: object) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(app, UNTRUSTED) as c:
        yield c


@pytest.fixture
def configure(app: object) -> AsyncIterator[object]:
    """Swap settings for one test, restoring them afterwards."""
    original = app.state.settings  # type: ignore[attr-defined]

    def apply(**changes: object) -> None:
        app.state.settings = dataclasses.replace(original, **changes)  # type: ignore[attr-defined]

    yield apply
    app.state.settings = original  # type: ignore[attr-defined]


async def _location(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    auth = await _token_for(client, headers)
    r = await client.post(
        "/Patient", json=PATIENT, headers={"Content-Type": "application/fhir+json", **headers, **auth}
    )
    assert r.status_code == 201, r.text
    return r.headers["location"]


async def test_without_proxy_headers_the_base_is_the_host_header(trusted: httpx.AsyncClient) -> None:
    assert (await _location(trusted, {})).startswith("http://backend:8080/fhir/Patient/")


async def test_x_forwarded_headers_from_a_trusted_proxy_set_the_location(trusted: httpx.AsyncClient) -> None:
    headers = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "ehr.example.org",
        "X-Forwarded-Port": "8443",
        "X-Forwarded-Prefix": "/api",
    }
    assert (await _location(trusted, headers)).startswith("https://ehr.example.org:8443/api/fhir/Patient/")


async def test_the_default_port_of_the_forwarded_scheme_is_left_out(trusted: httpx.AsyncClient) -> None:
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "ehr.example.org", "X-Forwarded-Port": "443"}
    assert (await _location(trusted, headers)).startswith("https://ehr.example.org/fhir/Patient/")


async def test_forwarded_hops_added_by_trusted_proxies_reach_back_to_the_client(
    trusted: httpx.AsyncClient, configure
) -> None:
    configure(trusted_proxies=("127.0.0.0/8", "10.1.1.1/32"))  # the peer, and the proxy before it
    headers = {"Forwarded": 'for="[2001:db8::1]:4711";proto=https;host="ehr.example.org", for=10.1.1.1;host=inner'}
    assert (await _location(trusted, headers)).startswith("https://ehr.example.org/fhir/Patient/")


async def test_forwarded_hops_a_client_wrote_itself_are_ignored(trusted: httpx.AsyncClient) -> None:
    # 10.1.1.1 is no trusted proxy: the element before its hop is the client's own claim
    headers = {"Forwarded": 'for=1.2.3.4;proto=https;host="evil.example", for=10.1.1.1;host=inner'}
    assert (await _location(trusted, headers)).startswith("http://inner/fhir/Patient/")


async def test_x_forwarded_values_a_client_prepended_are_ignored(trusted: httpx.AsyncClient) -> None:
    headers = {"X-Forwarded-For": "6.6.6.6, 10.0.0.9", "X-Forwarded-Host": "evil.example, ehr.example.org"}
    assert (await _location(trusted, headers)).startswith("http://ehr.example.org/fhir/Patient/")


async def test_forwarded_header_wins_over_x_forwarded(trusted: httpx.AsyncClient) -> None:
    headers = {"Forwarded": "proto=https;host=a.example.org", "X-Forwarded-Host": "b.example.org"}
    assert (await _location(trusted, headers)).startswith("https://a.example.org/fhir/")


async def test_proxy_headers_from_an_untrusted_peer_are_ignored(untrusted: httpx.AsyncClient) -> None:
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example", "Forwarded": "host=evil.example"}
    assert (await _location(untrusted, headers)).startswith("http://backend:8080/fhir/Patient/")


async def test_trusted_proxies_setting_names_the_peers(untrusted: httpx.AsyncClient, configure) -> None:
    configure(trusted_proxies=("10.0.0.0/24",))
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "ehr.example.org"}
    assert (await _location(untrusted, headers)).startswith("https://ehr.example.org/fhir/")


async def test_searchset_full_urls_and_links_use_the_forwarded_base(trusted: httpx.AsyncClient) -> None:
    await _location(trusted, {})
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "ehr.example.org"}
    headers.update(await _token_for(trusted, headers))
    r = await trusted.get("/Patient", params={"family": "Proxy", "_count": "1"}, headers=headers)
    bundle = r.json()
    assert all(link["url"].startswith("https://ehr.example.org/fhir/Patient?") for link in bundle["link"])
    assert bundle["entry"][0]["fullUrl"].startswith("https://ehr.example.org/fhir/Patient/")


async def test_public_base_url_wins_over_proxy_headers(trusted: httpx.AsyncClient, configure) -> None:
    configure(public_base_url="https://public.example.org/r4")
    headers = {"X-Forwarded-Host": "ehr.example.org"}
    assert (await _location(trusted, headers)).startswith("https://public.example.org/r4/Patient/")


async def test_a_host_outside_allowed_hosts_gets_400(untrusted: httpx.AsyncClient, configure) -> None:
    configure(allowed_hosts=("ehr.example.org", "*.internal.example.org"))
    r = await untrusted.get("/Patient", headers={"Host": "evil.example"})
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


async def test_allowed_hosts_accept_wildcard_subdomains(untrusted: httpx.AsyncClient, configure) -> None:
    configure(allowed_hosts=("ehr.example.org", "*.internal.example.org"))
    r = await untrusted.get("/metadata", headers={"Host": "node1.internal.example.org:8080"})
    assert r.status_code == 200


async def test_a_forwarded_host_outside_allowed_hosts_gets_400(trusted: httpx.AsyncClient, configure) -> None:
    configure(allowed_hosts=("ehr.example.org",))
    r = await trusted.get("/metadata", headers={"Host": "ehr.example.org", "X-Forwarded-Host": "evil.example"})
    assert r.status_code == 400


async def test_a_malformed_host_header_gets_400(untrusted: httpx.AsyncClient) -> None:
    r = await untrusted.get("/metadata", headers={"Host": "evil.example/x?y"})
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


async def test_a_malformed_forwarded_value_from_a_trusted_proxy_gets_400(trusted: httpx.AsyncClient) -> None:
    r = await trusted.get("/metadata", headers={"X-Forwarded-Proto": "javascript"})
    assert r.status_code == 400


def test_forwarded_parsing_keeps_quoted_commas_and_ipv6() -> None:
    first, second = parse_forwarded('for="[2001:db8:cafe::17]:4711";host="a,b";proto=HTTPS, for=192.0.2.43')
    assert (first.for_, first.host, first.proto) == ("[2001:db8:cafe::17]:4711", "a,b", "HTTPS")
    assert second.for_ == "192.0.2.43"


def test_trust_matches_cidrs_and_ipv4_mapped_addresses() -> None:
    assert is_trusted("::ffff:127.0.0.1", ("127.0.0.0/8",))
    assert is_trusted("192.168.1.9", ("192.168.1.0/24",))
    assert not is_trusted("192.168.2.9", ("192.168.1.0/24",))
    assert not is_trusted("testclient", ("127.0.0.0/8",))


def test_allowed_host_wildcards_need_a_subdomain() -> None:
    assert host_allowed("a.example.org:443", ("*.example.org",))
    assert not host_allowed("example.org", ("*.example.org",))
    assert not host_allowed("badexample.org", ("*.example.org",))


def _scope_request(app: object, headers: dict[str, str], peer: tuple[str, int]):
    from starlette.requests import Request

    raw = [(k.lower().encode(), v.encode()) for k, v in {"host": "backend", **headers}.items()]
    scope = {"type": "http", "method": "GET", "path": "/fhir/metadata", "query_string": b"", "headers": raw}
    return Request({**scope, "client": peer, "scheme": "http", "server": ("backend", 80), "app": app})


@pytest.mark.parametrize(
    "headers",
    [{"Forwarded": 'for="[2001:db8::1]:4711";proto=https'}, {"X-Forwarded-For": "[2001:db8::1]:4711, 127.0.0.2"}],
)
def test_the_original_client_address_is_kept_from_a_trusted_proxy(app, headers):
    from headless_ehr.rest.origin import request_origin

    request = _scope_request(app, headers, TRUSTED)
    request_origin(request)
    assert request.state.client_address == "[2001:db8::1]:4711"


@pytest.mark.parametrize(
    "headers",
    [{"Forwarded": "for=6.6.6.6, for=203.0.113.7"}, {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}],
)
def test_a_client_cannot_forge_its_address_behind_an_appending_proxy(app, headers):
    from headless_ehr.rest.origin import request_origin

    request = _scope_request(app, headers, TRUSTED)
    request_origin(request)
    assert request.state.client_address == "203.0.113.7"  # what the trusted proxy saw connect
