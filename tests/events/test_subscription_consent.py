# ruff: noqa: F811 (the ward fixtures are imported, and named as parameters)
"""Matching applies the owner's access policy and patients' Consents as they are now."""

from __future__ import annotations

import uuid

from tests.auth.test_consent import READS, actor, consent, user_for  # noqa: F401 (fixtures)
from tests.auth.test_policies_enforcement import Ward, admin, ward  # noqa: F401 (fixtures)
from tests.auth.world import observation, post

from .conftest import create, notified, settle, subscription, wait_notified


def subscribing_policy() -> dict:
    """Read everything; create and manage Subscriptions."""
    return {
        "name": f"subscriber-{uuid.uuid4().hex[:10]}",
        "rules": [
            {"resourceType": "*", "interactions": READS},
            {"resourceType": "Subscription", "interactions": ["create", "read", "update", "delete", "search"]},
        ],
    }


async def test_a_consent_given_after_subscribing_holds_back_that_patients_events(
    app, client, db, user_for, ward: Ward, subscriptions
) -> None:
    nurse = await user_for(subscribing_policy())
    code = uuid.uuid4().hex
    sid = (await create(nurse, subscription(f"Observation?code=urn:test:code|{code}")))["id"]
    subscriptions.append(sid)
    before = await post(client, observation(ward.a, "laboratory", code))
    await wait_notified(db, sid, 1)
    await post(client, consent(ward.a, {"type": "deny", "actor": actor(f"Practitioner/{ward.nurse}")}))
    await post(client, observation(ward.a, "laboratory", code))
    after_b = await post(client, observation(ward.b, "laboratory", code))
    await wait_notified(db, sid, 2)
    await settle(app)
    assert [r["resource_id"] for r in await notified(db, sid)] == [before, after_b]
