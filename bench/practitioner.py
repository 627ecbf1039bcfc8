"""A practitioner user holding a criteria access policy, for `bench/search.py --principal`.

Made through the real admin API of the server under test (policy, app client, user),
then signed in through the real authorization-code flow (login and consent pages,
PKCE), so the token is exactly what a clinician's app would get. See bench/README.md.

The Synthea patients carry neither `generalPractitioner` nor `managingOrganization`, and
the Organizations and Practitioners their Encounters name each belong to one patient
(the smart-r4 Bundles reference them outside the data set, so every Bundle gets its
own), so the policy's "my patients" is a catchment: the patients living in Greater
Boston ZIP areas, with only their vital signs and laboratory Observations.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

POLICY = "bench-greater-boston"
USERNAME = "bench-practitioner"
CLIENT_ID = "bench-practitioner-app"
REDIRECT = "http://127.0.0.1/bench-callback"  # never called: the code is read from the redirect
SCOPES = ["user/*.rs", "openid", "fhirUser"]
# ZIP prefixes of the catchment (Patient.address.postalCode, a string search: prefixes):
# North Shore, Boston and the inner suburbs; 38% of the Synthea patients
CATCHMENT = "019,020,021,024"
CATEGORIES = ("vital-signs", "laboratory")  # the Observations the policy opens
COMPARTMENT = f"Patient?address-postalcode={CATCHMENT}"


def policy_document() -> dict[str, Any]:
    """Every type of the catchment's patients' records, but of Observations only vital
    signs and laboratory results (a rule naming a type replaces the `*` rules for it, so
    the Observation rule carries the compartment too)."""
    return {
        "name": POLICY,
        "description": "bench/search.py: a clinician of a Greater Boston practice network",
        "rules": [
            {
                "resourceType": "Observation",
                "interactions": ["read", "search"],
                "criteria": f"category={','.join(CATEGORIES)}",
                "compartment": COMPARTMENT,
            },
            {"resourceType": "*", "interactions": ["read", "search"], "compartment": COMPARTMENT},
        ],
    }


def _checked(response: httpx.Response, *ok: int) -> httpx.Response:
    if response.status_code not in ok:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: {response.status_code} {response.text[:500]}"
        )
    return response


def register(origin: str, admin_token: str, fhir_user: str) -> str:
    """Policy, public app client and user through the admin API (made again when an
    earlier run left them); the user's password."""
    password = secrets.token_urlsafe(24)
    headers = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=origin, headers=headers, trust_env=False, timeout=60) as admin:
        _checked(admin.delete(f"/admin/users/{USERNAME}"), 204, 404)
        _checked(admin.delete(f"/admin/clients/{CLIENT_ID}"), 204, 404)
        _checked(admin.delete(f"/admin/policies/{POLICY}"), 204, 404)
        _checked(admin.post("/admin/policies", json=policy_document()), 201)
        client = {"name": "bench practitioner app", "client_id": CLIENT_ID, "public": True}
        _checked(admin.post("/admin/clients", json={**client, "redirect_uris": [REDIRECT], "scopes": SCOPES}), 201)
        user = {"username": USERNAME, "password": password, "fhir_user": fhir_user, "policies": [POLICY]}
        _checked(admin.post("/admin/users", json=user), 201)
    return password


class _Form(HTMLParser):
    """The fields of the page's form as a browser would submit them (checked boxes only)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag != "input" or not a.get("name"):
            return
        if a.get("type") in ("hidden", "checkbox") and (a.get("type") == "hidden" or "checked" in a):
            self.fields.append((str(a["name"]), a.get("value") or ""))


def _form(page: httpx.Response) -> list[tuple[str, str]]:
    parser = _Form()
    parser.feed(_checked(page, 200).text)
    return parser.fields


def sign_in(origin: str, fhir_base: str, password: str) -> str:
    """The user's access token: authorization code with PKCE through the login and
    consent pages, exchanged at the token endpoint."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    request = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "scope": " ".join(SCOPES),
        "state": secrets.token_urlsafe(8),
        "aud": fhir_base,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    with httpx.Client(base_url=origin, trust_env=False, timeout=60) as browser:
        login = _form(browser.get("/oauth/authorize", params=request))
        login += [("username", USERNAME), ("password", password)]
        consent = _form(browser.post("/oauth/authorize", content=urlencode(login), headers=form))
        done = browser.post("/oauth/authorize", content=urlencode([*consent, ("decision", "allow")]), headers=form)
        location = _checked(done, 303).headers["location"]
        code = parse_qs(urlsplit(location).query)["code"][0]
        exchange = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
        answer = browser.post("/oauth/token", data={**exchange, "code_verifier": verifier, "client_id": CLIENT_ID})
        return str(_checked(answer, 200).json()["access_token"])


async def principal_of_token(db: Any, token: str) -> Any:
    """The Principal the server makes of token (claims, then the user's policy through
    the server's own loader), for the plans; the signature was checked by the server."""
    from headless_ehr.auth.policies import Policies
    from headless_ehr.auth.tokens import principal_of

    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    principal = await Policies(db).apply(token, principal_of(claims))
    if principal.policy is None:
        raise RuntimeError(f"{USERNAME}'s token carries no policy")
    return principal
