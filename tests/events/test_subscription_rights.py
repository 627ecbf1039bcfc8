"""Subscriptions and access control: the owner's rights decide what it may ask and what it is told."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from headless_ehr.auth.principal import SUBSCRIPTION_OWNER_TAG
from tests.auth.world import LAB, World, build_world
from tests.auth.world import observation as world_observation
from tests.conftest import bearer, mint_token

from .conftest import FHIR_JSON, code, create, notified, settle, subscription, wait_notified


@pytest.fixture(scope="module")
async def world(app: Any) -> World:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver/fhir", headers=bearer(mint_token(app))
    ) as c:
        return await build_world(c)


@pytest.fixture
async def patient_a(client_for: Any, world: World) -> httpx.AsyncClient:
    """Patient A's app: may subscribe (and read) within A's record."""
    return await client_for("patient/*.cruds", patient=world.a.patient)


async def test_a_patient_token_cannot_subscribe_to_another_patient(patient_a, world) -> None:
    for criteria in (f"Observation?patient=Patient/{world.b.patient}", f"Observation?subject={world.b.patient}"):
        res = await patient_a.post("/Subscription", json=subscription(criteria), headers=FHIR_JSON)
        assert res.status_code == 403, res.text


async def test_a_patient_token_subscribes_within_its_own_record(patient_a, world, subscriptions) -> None:
    made = await create(patient_a, subscription(f"Observation?patient=Patient/{world.a.patient}"))
    subscriptions.append(made["id"])
    assert made["status"] == "active"
    assert {"system": SUBSCRIPTION_OWNER_TAG, "code": f"Patient/{world.a.patient}"} in made["meta"]["tag"]


async def test_matching_never_yields_another_patients_resource(app, client, db, patient_a, world, subscriptions):
    c = code()
    sid = (await create(patient_a, subscription(f"Observation?code=urn:test:code|{c}")))["id"]
    subscriptions.append(sid)
    theirs = await create(client, world_observation(world.b.patient, "laboratory", c))
    mine = await create(client, world_observation(world.a.patient, "laboratory", c))
    rows = await wait_notified(db, sid, 1)
    await settle(app)
    assert [r["resource_id"] for r in await notified(db, sid)] == [mine["id"]]
    assert theirs["id"] not in {r["resource_id"] for r in rows}


async def test_another_patient_cannot_see_or_change_a_patients_subscription(
    client_for, patient_a, world, subscriptions
) -> None:
    sid = (await create(patient_a, subscription(f"Observation?patient=Patient/{world.a.patient}")))["id"]
    subscriptions.append(sid)
    patient_b = await client_for("patient/*.cruds", patient=world.b.patient)
    assert (await patient_b.get(f"/Subscription/{sid}")).status_code == 404
    found = (await patient_b.get("/Subscription", params={"_id": sid})).json()
    assert not found.get("entry")
    assert (await patient_b.delete(f"/Subscription/{sid}")).status_code in (404, 403)
    assert (await patient_a.get(f"/Subscription/{sid}")).status_code == 200


async def test_a_client_cannot_set_the_owner_tag(client, patient_a, world, subscriptions) -> None:
    forged = subscription(
        "Observation?status=final",
        meta={"tag": [{"system": SUBSCRIPTION_OWNER_TAG, "code": f"Patient/{world.a.patient}"}]},
    )
    sid = (await create(client, forged))["id"]
    subscriptions.append(sid)
    stored = (await client.get(f"/Subscription/{sid}")).json()
    assert SUBSCRIPTION_OWNER_TAG not in str(stored.get("meta", {}).get("tag"))
    assert (await patient_a.get(f"/Subscription/{sid}")).status_code == 404


async def test_subscribing_needs_the_right_to_search_the_criteria(client_for) -> None:
    writer = await client_for("user/Subscription.cruds user/Patient.rs")
    res = await writer.post("/Subscription", json=subscription("Observation?status=final"), headers=FHIR_JSON)
    assert res.status_code == 403, res.text


async def test_scope_criteria_narrow_what_is_notified(app, client, client_for, db, world, subscriptions) -> None:
    """Broad criteria, a token that reads lab results only: vital signs are never notified."""
    labs_only = await client_for(f"user/Subscription.cruds user/Observation.rs?category={LAB}")
    c = code()
    sid = (await create(labs_only, subscription(f"Observation?code=urn:test:code|{c}")))["id"]
    subscriptions.append(sid)
    vitals = await create(client, world_observation(world.a.patient, "vital-signs", c))
    lab = await create(client, world_observation(world.a.patient, "laboratory", c))
    await wait_notified(db, sid, 1)
    await settle(app)
    found = [r["resource_id"] for r in await notified(db, sid)]
    assert found == [lab["id"]] and vitals["id"] not in found


async def test_the_owner_is_the_token_that_wrote_the_subscription(client_for, db, world, subscriptions) -> None:
    writer = await client_for("patient/*.cruds", patient=world.a.patient, subject="app-user-7", client_id="app-7")
    sid = (await create(writer, subscription(f"Observation?patient=Patient/{world.a.patient}")))["id"]
    subscriptions.append(sid)
    import orjson

    owner = orjson.loads(await db.fetchval("SELECT owner FROM subscription_state WHERE id = $1", sid))
    assert owner["sub"] == "app-user-7" and owner["client_id"] == "app-7"
    assert owner["patient"] == world.a.patient and owner["scope"] == "patient/*.cruds"


async def test_the_owner_is_rebuilt_with_the_rights_it_had(app, client_for, world, subscriptions) -> None:
    from headless_ehr.events.owner import load_owner

    writer = await client_for("patient/*.cruds", patient=world.a.patient, subject="app-user-8")
    sid = (await create(writer, subscription(f"Observation?patient=Patient/{world.a.patient}")))["id"]
    subscriptions.append(sid)
    owner = await load_owner(app.state.pool, sid, app.state.policies)
    assert owner is not None and owner.subject == "app-user-8" and owner.patient == world.a.patient
    assert owner.access("read", "Observation") is not None  # held to A's record
    assert await load_owner(app.state.pool, "no-such-subscription", app.state.policies) is None
