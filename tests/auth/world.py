"""Two patients' worth of data, written with a system token, for the access tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

FHIR_JSON = "application/fhir+json"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB = f"{CATEGORY}|laboratory"
VITALS = f"{CATEGORY}|vital-signs"
IDENT = "urn:test:access"


def observation(patient: str, category: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": "urn:test:code", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2024-01-01T00:00:00Z",
        **extra,
    }


@dataclass
class Side:
    """One patient's resources."""

    patient: str = ""
    family: str = ""
    code: str = ""  # the code of this side's observations
    lab: str = ""
    vitals: str = ""
    encounter: str = ""
    condition: str = ""
    obs_ident: str = ""  # identifier value of the lab observation
    patient_ident: str = ""
    list: str = ""
    ids: set[str] = field(default_factory=set)  # every id of the side's own resources


@dataclass
class World:
    a: Side
    b: Side
    cross: str = ""  # B's Observation whose encounter is A's Encounter
    performed: str = ""  # A's Observation performed by Patient B (in both compartments)
    medication: str = ""
    organization: str = ""
    practitioner: str = ""
    unlisted: str = ""  # a List outside any compartment naming B's lab observation


async def post(client: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    res = await client.post(f"/{resource['resourceType']}", json=resource, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 201, res.text
    return res.json()["id"]


async def _side(client: httpx.AsyncClient, practitioner: str) -> Side:
    s = Side(family=uuid.uuid4().hex, code=uuid.uuid4().hex, obs_ident=uuid.uuid4().hex)
    s.patient_ident = uuid.uuid4().hex
    s.patient = await post(
        client,
        {
            "resourceType": "Patient",
            "name": [{"family": s.family}],
            "identifier": [{"system": IDENT, "value": s.patient_ident}],
            "generalPractitioner": [{"reference": f"Practitioner/{practitioner}"}],
        },
    )
    s.encounter = await post(
        client,
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{s.patient}"},
        },
    )
    s.lab = await post(
        client,
        observation(
            s.patient,
            "laboratory",
            s.code,
            identifier=[{"system": IDENT, "value": s.obs_ident}],
            encounter={"reference": f"Encounter/{s.encounter}"},
        ),
    )
    s.vitals = await post(client, observation(s.patient, "vital-signs", s.code))
    s.condition = await post(
        client,
        {
            "resourceType": "Condition",
            "subject": {"reference": f"Patient/{s.patient}"},
            "code": {"coding": [{"system": "urn:test:code", "code": s.code}]},
        },
    )
    s.list = await post(
        client,
        {
            "resourceType": "List",
            "status": "current",
            "mode": "working",
            "subject": {"reference": f"Patient/{s.patient}"},
            "entry": [{"item": {"reference": f"Observation/{s.lab}"}}],
        },
    )
    s.ids = {s.patient, s.encounter, s.lab, s.vitals, s.condition, s.list}
    return s


async def build_world(client: httpx.AsyncClient) -> World:
    practitioner = await post(client, {"resourceType": "Practitioner", "name": [{"family": uuid.uuid4().hex}]})
    a, b = await _side(client, practitioner), await _side(client, practitioner)
    w = World(a, b, practitioner=practitioner)
    w.cross = await post(
        client, observation(b.patient, "laboratory", b.code, encounter={"reference": f"Encounter/{a.encounter}"})
    )
    b.ids.add(w.cross)
    w.performed = await post(
        client, observation(a.patient, "laboratory", a.code, performer=[{"reference": f"Patient/{b.patient}"}])
    )
    a.ids.add(w.performed)
    w.organization = await post(client, {"resourceType": "Organization", "name": uuid.uuid4().hex})
    w.medication = await post(client, {"resourceType": "Medication", "code": {"text": uuid.uuid4().hex}})
    w.unlisted = await post(
        client,
        {
            "resourceType": "List",
            "status": "current",
            "mode": "working",
            "entry": [{"item": {"reference": f"Observation/{b.lab}"}}],
        },
    )
    return w


def ids_of(bundle: dict[str, Any]) -> set[str]:
    """Every resource id in a Bundle (matches and includes)."""
    return {e["resource"]["id"] for e in bundle.get("entry") or [] if "resource" in e}


async def all_pages(client: httpx.AsyncClient, url: str, params: Any = None) -> set[str]:
    """The ids on every page of a search or history, following next links."""
    found: set[str] = set()
    res = await client.get(url, params=params)
    for _ in range(200):
        assert res.status_code == 200, res.text
        bundle = res.json()
        found |= ids_of(bundle)
        nxt = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
        if nxt is None:
            return found
        res = await client.get(nxt)
    raise AssertionError("too many pages")


def no_b(found: set[str], w: World) -> None:
    leaked = found & w.b.ids
    assert not leaked, f"patient B's resources leaked: {leaked}"


async def get_ok(c: httpx.AsyncClient, url: str, params: Any = None) -> dict[str, Any]:
    res = await c.get(url, params=params)
    assert res.status_code == 200, res.text
    return res.json()


def transaction(*entries: tuple[Any, ...]) -> dict[str, Any]:
    """A transaction Bundle of entries (method, url, resource or None[, fullUrl or None])."""
    out = []
    for method, url, resource, *full_url in entries:
        entry: dict[str, Any] = {"request": {"method": method, "url": url}}
        if resource is not None:
            entry["resource"] = resource
        if full_url and full_url[0] is not None:
            entry["fullUrl"] = full_url[0]
        out.append(entry)
    return {"resourceType": "Bundle", "type": "transaction", "entry": out}
