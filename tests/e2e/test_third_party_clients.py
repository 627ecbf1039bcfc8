"""Unchanged third-party FHIR clients against a real `ehr serve` process.

fhirpy (async) and SMART's fhirclient drive create, read, search, paging through the
clients' own `next`-link support and includes. Each test skips cleanly when its
client package is not installed (`pip install fhirpy fhirclient`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from .test_serve import Server


def _env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    env["EHR_DATABASE_URL"] = database_url
    return env


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Server]:
    """One `ehr serve` child process on the test database for this module."""
    running = Server(_env(database_url))
    try:
        running.wait_ready()
        yield running
    finally:
        assert running.stop() == 0


def unique() -> str:
    return uuid.uuid4().hex[:16]


# -- fhirpy --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fhirpy():
    """The fhirpy package; requested before `server` so a missing package skips before start-up."""
    return pytest.importorskip("fhirpy", reason="fhirpy is not installed (pip install fhirpy)")


def _fhirpy_client(fhirpy, server: Server):
    """fhirpy's client with the server's token (its `authorization` option)."""
    return fhirpy.AsyncFHIRClient(server.base, authorization=f"Bearer {server.token()}")


async def _fhirpy_patients(client, family: str, count: int, organization=None) -> list[str]:
    ids = []
    for i in range(count):
        fields = {"name": [{"family": family, "given": [f"G{i}"]}]}
        if organization is not None:
            fields["managingOrganization"] = organization.to_reference()
        patient = client.resource("Patient", **fields)
        await patient.save()
        ids.append(patient.id)
    return ids


async def test_fhirpy_creates_and_reads_a_patient(fhirpy, server):
    client = _fhirpy_client(fhirpy, server)
    family = unique()
    patient = client.resource("Patient", name=[{"family": family, "given": ["Ann"]}], gender="female")
    await patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"
    read = await client.reference("Patient", patient.id).to_resource()
    assert read["name"][0]["family"] == family
    assert read["gender"] == "female"


async def test_fhirpy_search_returns_one_page_of_count(fhirpy, server):
    client = _fhirpy_client(fhirpy, server)
    family = unique()
    ids = await _fhirpy_patients(client, family, 7)
    page = await client.resources("Patient").search(family=family).sort("_id").limit(3).fetch()
    assert [p.id for p in page] == sorted(ids)[:3]


async def test_fhirpy_fetch_all_follows_next_links_through_every_page(fhirpy, server):
    client = _fhirpy_client(fhirpy, server)
    family = unique()
    ids = await _fhirpy_patients(client, family, 7)
    everyone = await client.resources("Patient").search(family=family).sort("_id").limit(3).fetch_all()
    assert [p.id for p in everyone] == sorted(ids)


async def test_fhirpy_async_iteration_pages_through_results(fhirpy, server):
    client = _fhirpy_client(fhirpy, server)
    family = unique()
    ids = await _fhirpy_patients(client, family, 5)
    seen = [p.id async for p in client.resources("Patient").search(family=family).limit(2)]
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))


async def test_fhirpy_include_returns_the_referenced_organization(fhirpy, server):
    client = _fhirpy_client(fhirpy, server)
    family = unique()
    organization = client.resource("Organization", name=f"{family} Clinic")
    await organization.save()
    ids = await _fhirpy_patients(client, family, 2, organization)
    bundle = await client.resources("Patient").search(family=family).include("Patient", "organization").fetch_raw()
    by_mode: dict[str, set[tuple[str, str]]] = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        by_mode.setdefault(entry["search"]["mode"], set()).add((resource["resourceType"], resource["id"]))
    assert by_mode == {
        "match": {("Patient", i) for i in ids},
        "include": {("Organization", organization.id)},
    }


async def test_fhirpy_count_reads_the_total_of_a_count_zero_search(fhirpy, server):
    client = _fhirpy_client(fhirpy, server)
    family = unique()
    await _fhirpy_patients(client, family, 3)
    assert await client.resources("Patient").search(family=family).count() == 3


# -- fhirclient (SMART on FHIR Python client) ----------------------------------------


@pytest.fixture(scope="module")
def fhirclient():
    """The fhirclient package; requested before `server` so a missing package skips before start-up."""
    return pytest.importorskip("fhirclient.client", reason="fhirclient is not installed (pip install fhirclient)")


@pytest.fixture
def smart(fhirclient, server: Server):
    """A SMART FHIRClient on the running server, its HTTP session holding the server's token."""
    client = fhirclient.FHIRClient(settings={"app_id": "x", "api_base": server.base + "/"})
    client.server.session.headers["Authorization"] = f"Bearer {server.token()}"
    return client


def _fhirclient_patients(smart, family: str, count: int) -> list[str]:
    from fhirclient.models.patient import Patient

    ids = []
    for i in range(count):
        created = Patient({"name": [{"family": family, "given": [f"G{i}"]}]}).create(smart.server)
        assert created is not None and created["id"]
        ids.append(created["id"])
    return ids


def test_fhirclient_creates_and_reads_a_patient(smart):
    from fhirclient.models.patient import Patient

    family = unique()
    (rid,) = _fhirclient_patients(smart, family, 1)
    patient = Patient.read(rid, smart.server)
    assert patient.id == rid
    assert patient.name[0].family == family


def test_fhirclient_search_pages_through_next_links(smart):
    from fhirclient.models.patient import Patient

    family = unique()
    ids = _fhirclient_patients(smart, family, 7)
    search = Patient.where(struct={"family": family, "_count": "3", "_sort": "_id"})
    pages = list(search.perform_iter(smart.server))
    assert [len(page.entry or []) for page in pages] == [3, 3, 1]
    seen = [entry.resource.id for page in pages for entry in page.entry or []]
    assert seen == sorted(ids)


def test_fhirclient_search_yields_every_resource_across_pages(smart):
    from fhirclient.models.patient import Patient

    family = unique()
    ids = _fhirclient_patients(smart, family, 5)
    found = list(Patient.where(struct={"family": family, "_count": "2"}).perform_resources_iter(smart.server))
    assert all(isinstance(p, Patient) for p in found)
    assert sorted(p.id for p in found) == sorted(ids)


def test_fhirclient_include_returns_the_referenced_patient(smart):
    from fhirclient.models.fhirsearch import FHIRSearch
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient

    family = unique()
    (pid,) = _fhirclient_patients(smart, family, 1)
    code = unique()
    observation = Observation(
        {
            "status": "final",
            "code": {"coding": [{"system": "http://example.org/codes", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"},
        }
    )
    oid = observation.create(smart.server)["id"]
    search = FHIRSearch(Observation, {"code": code}).include("subject")
    (bundle,) = list(search.perform_iter(smart.server))
    by_mode = {(e.search.mode, e.resource.resource_type, e.resource.id) for e in bundle.entry}
    assert by_mode == {("match", "Observation", oid), ("include", "Patient", pid)}
    assert isinstance(next(e.resource for e in bundle.entry if e.search.mode == "include"), Patient)
