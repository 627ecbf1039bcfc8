"""An external OpenID Connect issuer (EHR_TRUSTED_ISSUER): its tokens verified with its published keys.

The issuer is real: a small Starlette app served by uvicorn on a free port, publishing a
discovery document and a JWKS, whose tokens are signed here with its private keys.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from joserfc import jwk, jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from headless_ehr.auth import external
from headless_ehr.auth.external import principal_from_claims
from headless_ehr.auth.policies import put_policy
from tests.conftest import bearer

from .forge import b64
from .oauth_support import free_port, serving

AUDIENCE = "https://ehr.example.org/fhir"
CURVES = {"ES256": "P-256", "ES384": "P-384"}


@dataclass
class FakeIssuer:
    """The issuer's state: its keys (private, this side only) and how often its JWKS was fetched."""

    url: str
    keys: dict[str, jwk.Key] = field(default_factory=dict)
    jwks_fetches: int = 0
    discovery: dict[str, Any] | None = None  # overrides the discovery document
    jwks: dict[str, Any] | None = None  # overrides the JWKS

    def add_key(self, alg: str = "RS256") -> str:
        kid = f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        if alg.startswith("RS"):
            self.keys[kid] = jwk.RSAKey.generate_key(2048, parameters={"kid": kid, "alg": alg})
        else:
            self.keys[kid] = jwk.ECKey.generate_key(CURVES[alg], parameters={"kid": kid, "alg": alg})
        return kid

    def token(self, kid: str | None = None, alg: str | None = None, key: jwk.Key | None = None, **claims: Any) -> str:
        kid = kid or next(iter(self.keys))
        key = key or self.keys[kid]
        alg = alg or str(key.alg)
        now = int(time.time())
        body = {"iss": self.url, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, "scope": "system/*.*"}
        body.update(claims)
        return jwt.encode(
            {"alg": alg, "kid": kid, "typ": "JWT"},
            {k: v for k, v in body.items() if v is not None},
            key,
            algorithms=[alg],
        )


@pytest.fixture(scope="module")
def served() -> Iterator[FakeIssuer]:
    state = FakeIssuer("")  # its URL once it is served

    async def discovery(request: Request) -> Response:
        document = state.discovery or {"issuer": state.url, "jwks_uri": f"{state.url}/protocol/openid-connect/certs"}
        return JSONResponse(document)

    async def certs(request: Request) -> Response:
        state.jwks_fetches += 1
        keys = [{**k.as_dict(private=False), "use": "sig", "alg": k.alg} for k in state.keys.values()]
        return JSONResponse(state.jwks or {"keys": keys})

    app = Starlette(
        routes=[
            Route("/realms/test/.well-known/openid-configuration", discovery),
            Route("/realms/test/protocol/openid-connect/certs", certs),
        ]
    )
    with serving(app) as url:
        state.url = f"{url}/realms/test"
        yield state


@pytest.fixture
def issuer(served: FakeIssuer) -> FakeIssuer:
    """The served issuer with one fresh RS256 key, its counters reset."""
    served.keys.clear()
    served.add_key("RS256")
    served.jwks_fetches = 0
    served.discovery = None
    served.jwks = None
    return served


@pytest.fixture
async def trusting(app_with, issuer: FakeIssuer) -> Any:
    """A client of an app trusting the issuer; its own token is replaced per request."""
    return await app_with(trusted_issuer=issuer.url, trusted_audience=AUDIENCE)


def _challenge(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    return response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("alg", ["RS256", "RS384", "ES256", "ES384"])
async def test_a_token_of_the_trusted_issuer_is_accepted(trusting, issuer, alg):
    kid = issuer.add_key(alg)
    response = await trusting.get("/Patient?_count=1", headers=bearer(issuer.token(kid)))
    assert response.status_code == 200, response.text


async def test_this_servers_own_tokens_are_still_accepted(trusting):
    assert (await trusting.get("/Patient?_count=1")).status_code == 200


async def test_a_token_for_another_audience_is_refused(trusting, issuer):
    token = issuer.token(aud="https://other.example.org/fhir")
    assert "another audience" in _challenge(await trusting.get("/Patient", headers=bearer(token)))


async def test_the_audience_may_be_one_of_several(trusting, issuer):
    token = issuer.token(aud=["account", AUDIENCE])
    assert (await trusting.get("/Patient?_count=1", headers=bearer(token))).status_code == 200


async def test_a_token_signed_with_a_key_the_issuer_does_not_hold_is_refused(trusting, issuer):
    kid = next(iter(issuer.keys))
    impostor = jwk.RSAKey.generate_key(2048, parameters={"kid": kid})  # the issuer's kid, another key
    token = issuer.token(kid, alg="RS256", key=impostor)
    assert "does not verify" in _challenge(await trusting.get("/Patient", headers=bearer(token)))


async def test_an_expired_token_is_refused(trusting, issuer):
    now = int(time.time())
    token = issuer.token(iat=now - 3600, exp=now - 600)
    assert "expired" in _challenge(await trusting.get("/Patient", headers=bearer(token)))


async def test_a_token_not_yet_valid_is_refused(trusting, issuer):
    token = issuer.token(nbf=int(time.time()) + 600)
    assert "not valid yet" in _challenge(await trusting.get("/Patient", headers=bearer(token)))


async def test_a_token_without_exp_is_refused(trusting, issuer):
    _challenge(await trusting.get("/Patient", headers=bearer(issuer.token(exp=None))))


def _mallorys(issuer: FakeIssuer) -> dict[str, Any]:
    """Claims an attacker would like the issuer to have signed."""
    return {
        "iss": issuer.url,
        "aud": AUDIENCE,
        "sub": "mallory",
        "exp": int(time.time()) + 300,
        "scope": "system/*.*",
    }


async def test_an_hs256_token_signed_with_the_issuers_public_key_is_refused(trusting, issuer):
    kid, key = next(iter(issuer.keys.items()))
    claims = _mallorys(issuer)
    signing_input = f"{b64({'alg': 'HS256', 'kid': kid})}.{b64(claims)}"
    mac = hmac.new(key.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(mac)}"
    assert "must be signed with one of" in _challenge(await trusting.get("/Patient", headers=bearer(token)))


async def test_an_unsigned_token_is_refused(trusting, issuer):
    claims = _mallorys(issuer)
    token = f"{b64({'alg': 'none'})}.{b64(claims)}."
    assert "must be signed with one of" in _challenge(await trusting.get("/Patient", headers=bearer(token)))


async def test_a_token_of_an_issuer_not_trusted_is_refused(trusting, issuer):
    token = issuer.token(iss="https://elsewhere.example.org")
    _challenge(await trusting.get("/Patient", headers=bearer(token)))


async def test_without_a_trusted_issuer_its_tokens_are_refused(app_with, issuer):
    client = await app_with()
    _challenge(await client.get("/Patient", headers=bearer(issuer.token())))


async def test_a_discovery_document_naming_another_issuer_is_not_believed(trusting, issuer):
    issuer.discovery = {"issuer": "https://evil.example.org", "jwks_uri": f"{issuer.url}/protocol/openid-connect/certs"}
    _challenge(await trusting.get("/Patient", headers=bearer(issuer.token())))
    assert issuer.jwks_fetches == 0


def _key_with_a_list_kid(issuer: FakeIssuer) -> list[dict[str, Any]]:
    return [{**k.as_dict(private=False), "kid": ["a", "list"]} for k in issuer.keys.values()]


@pytest.mark.parametrize("keys", [lambda issuer: 5, _key_with_a_list_kid], ids=["not-a-list", "list-kid"])
async def test_a_malformed_jwks_refuses_the_issuers_tokens_with_401(trusting, issuer, keys):
    issuer.jwks = {"keys": keys(issuer)}
    _challenge(await trusting.get("/Patient", headers=bearer(issuer.token())))


async def test_keys_are_fetched_once_for_many_tokens(trusting, issuer):
    for subject in ("alice", "bob", "carol"):
        for _ in range(2):
            response = await trusting.get("/Patient?_count=1", headers=bearer(issuer.token(sub=subject)))
            assert response.status_code == 200
    assert issuer.jwks_fetches == 1


async def test_an_unknown_kid_fetches_the_keys_again_at_most_once_a_minute(trusting, issuer, monkeypatch):
    assert (await trusting.get("/Patient?_count=1", headers=bearer(issuer.token()))).status_code == 200
    assert issuer.jwks_fetches == 1
    # within the minute after a fetch, a kid the server has not seen fetches nothing...
    rotated = issuer.add_key("ES256")
    _challenge(await trusting.get("/Patient", headers=bearer(issuer.token(rotated))))
    for i in range(5):
        made_up = issuer.token(f"made-up-{i}", key=issuer.keys[rotated])
        _challenge(await trusting.get("/Patient", headers=bearer(made_up)))
    assert issuer.jwks_fetches == 1
    # ...once the minute has passed, the issuer's new key is fetched, once
    monkeypatch.setattr(external, "REFETCH_SECONDS", 0.0)
    assert (await trusting.get("/Patient?_count=1", headers=bearer(issuer.token(rotated)))).status_code == 200
    assert issuer.jwks_fetches == 2
    assert (await trusting.get("/Patient?_count=1", headers=bearer(issuer.token(rotated)))).status_code == 200
    assert issuer.jwks_fetches == 2


async def test_a_claimed_fhir_user_scopes_roles_and_patient_make_the_principal(trusting, issuer):
    token = issuer.token(
        sub="dr-who",
        azp="portal",
        scope="openid patient/Observation.rs launch/patient",
        fhirUser=f"{AUDIENCE}/Practitioner/7",
        patient="123",
        realm_access={"roles": ["clinician"]},
        jti="abc",
    )
    principal = await _authenticate(trusting, token)
    assert principal.subject == "dr-who" and principal.client_id == "portal"
    assert principal.fhir_user == "Practitioner/7" and principal.patient == "123"
    assert principal.roles == ("clinician",)
    assert principal.allows("search", "Observation") and not principal.allows("search", "Condition")
    assert principal.attributes["issuer"] == issuer.url


def test_keycloak_claims_map_to_a_principal():
    claims = {
        "iss": "https://kc.example.org/realms/ehr",
        "sub": "f3c1",
        "azp": "smart-app",
        "scope": "openid profile user/*.rs",
        "fhirUser": "Practitioner/7",
        "realm_access": {"roles": ["offline_access", "clinician"]},
        "exp": int(time.time()) + 300,
    }
    principal = principal_from_claims(claims)
    assert principal.client_id == "smart-app" and principal.fhir_user == "Practitioner/7"
    assert principal.roles == ("offline_access", "clinician")
    assert principal.allows("read", "Condition") and not principal.allows("create", "Condition")


def test_auth0_claims_map_to_a_principal_with_a_namespaced_fhir_user_claim():
    claims = {
        "iss": "https://tenant.eu.auth0.com/",
        "sub": "auth0|42",
        "azp": "AbC",
        "scope": "system/Patient.read system/Observation.read",
        "https://ehr.example.org/fhirUser": "Device/9",
        "exp": int(time.time()) + 300,
    }
    principal = principal_from_claims(claims, "https://ehr.example.org/fhirUser")
    assert principal.system and principal.fhir_user == "Device/9"
    assert principal.allows("read", "Patient") and not principal.allows("update", "Patient")


def test_entra_id_claims_map_to_a_principal():
    claims = {
        "iss": "https://login.microsoftonline.com/tid/v2.0",
        "sub": "x",
        "azp": "11111111-2222",
        "scp": "patient.Observation.read patient.all.read",
        "roles": ["Clinician"],
        "groups": ["g-1"],
        "fhirUser": "https://ehr.example.org/fhir/Patient/123",
        "exp": int(time.time()) + 300,
    }
    principal = principal_from_claims(claims)
    assert principal.scope == "patient/Observation.read patient/*.read"
    assert principal.roles == ("Clinician", "g-1") and principal.fhir_user == "Patient/123"


def test_a_scope_list_in_scp_is_read_and_malformed_resource_scopes_are_dropped():
    claims = {"sub": "s", "scp": ["user/Patient.read", "user/profile.edit", "email"], "exp": int(time.time()) + 60}
    principal = principal_from_claims(claims)
    assert principal.scope == "user/Patient.read email"


def test_a_trusted_issuer_needs_an_audience():
    from headless_ehr.app import create_app
    from headless_ehr.config import Settings

    with pytest.raises(ValueError, match="EHR_TRUSTED_AUDIENCE"):
        create_app(Settings(database_url="postgresql://unused/x", trusted_issuer="https://kc.example.org"))


async def _authenticate(client: httpx.AsyncClient, token: str) -> Any:
    """The Principal the app's authenticator makes of a token (what enforcement then uses)."""
    app = client._transport.app  # type: ignore[attr-defined]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/fhir/Patient",
        "headers": [(b"authorization", f"Bearer {token}".encode()), (b"host", b"testserver")],
        "query_string": b"",
        "app": app,
        "client": ("127.0.0.1", 1),
    }
    return await app.state.authenticate(Request(scope), "http://testserver/fhir")


async def test_an_unreachable_issuer_refuses_its_tokens_with_401_not_an_error(app_with, issuer):
    nowhere = f"http://127.0.0.1:{free_port()}/realms/test"  # nothing listens there once the probe closed
    client = await app_with(trusted_issuer=nowhere, trusted_audience=AUDIENCE)
    token = issuer.token(iss=nowhere)
    assert "cannot be fetched" in _challenge(await client.get("/Patient", headers=bearer(token)))
    assert (await client.get("/Patient?_count=1")).status_code == 200  # this server's own tokens still work


async def test_the_issuers_practitioner_users_need_a_policy(app_with, issuer, client, db):
    """A practitioner of the external issuer holds no policy of ours unless
    EHR_TRUSTED_POLICIES names one: beyond one patient's record they reach nothing."""
    patient = (await client.post("/Patient", json={"resourceType": "Patient", "active": True})).json()["id"]
    practitioner = issuer.token(sub="dr-x", azp="portal", scope="user/*.rs", fhirUser="Practitioner/7")
    as_patient = issuer.token(sub="pat", azp="portal", scope="user/*.rs", fhirUser=f"Patient/{patient}")
    without = await app_with(trusted_issuer=issuer.url, trusted_audience=AUDIENCE)
    assert (await without.get(f"/Patient/{patient}", headers=bearer(practitioner))).status_code == 403
    assert (await without.get(f"/Patient/{patient}", headers=bearer(as_patient))).status_code == 200

    name = f"external-{uuid.uuid4().hex[:8]}"
    policy = {"name": name, "rules": [{"resourceType": "Patient", "interactions": ["read", "search"]}]}
    await put_policy(db, policy, "test", create=True)
    with_policy = await app_with(trusted_issuer=issuer.url, trusted_audience=AUDIENCE, trusted_policies=(name,))
    assert (await with_policy.get(f"/Patient/{patient}", headers=bearer(practitioner))).status_code == 200
    assert (await with_policy.get("/Observation?_count=1", headers=bearer(practitioner))).status_code == 403
