"""Backport SubscriptionTopics (Basic) and topic-based Subscriptions with filter criteria."""

from __future__ import annotations

from typing import Any

from .conftest import (
    FHIR_JSON,
    XVER,
    code,
    create,
    notified,
    observation,
    settle,
    topic,
    topic_subscription,
    wait_notified,
)


def _url() -> str:
    return f"http://example.org/topics/{code()}"


async def _refused(client, resource: dict[str, Any], status: int = 422) -> str:
    res = await client.post(f"/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
    assert res.status_code == status, res.text
    return res.text


async def test_a_topic_is_indexed_by_its_canonical_url(client, db) -> None:
    url = _url()
    made = await create(client, topic(url))
    row = await db.fetchrow("SELECT id, triggers FROM subscription_topic WHERE url = $1", url)
    assert row["id"] == made["id"]


async def test_deleting_a_topic_removes_it_from_the_index(client, db) -> None:
    url = _url()
    made = await create(client, topic(url))
    await client.delete(f"/Basic/{made['id']}")
    assert await db.fetchval("SELECT count(*) FROM subscription_topic WHERE url = $1", url) == 0


async def test_two_topics_may_not_share_a_url(client) -> None:
    url = _url()
    await create(client, topic(url))
    await _refused(client, topic(url), 409)


async def test_other_basic_resources_are_untouched(client, db) -> None:
    made = await create(client, {"resourceType": "Basic", "code": {"text": "something else"}})
    assert await db.fetchval("SELECT count(*) FROM subscription_topic WHERE id = $1", made["id"]) == 0


async def test_fhirpath_criteria_are_refused(client) -> None:
    resource = topic(_url(), parts=[{"url": "fhirPathCriteria", "valueString": "%current.status = 'final'"}])
    assert "fhirPathCriteria" in await _refused(client, resource)


async def test_previous_query_criteria_are_refused(client) -> None:
    previous = {"url": "queryCriteria", "extension": [{"url": "previous", "valueString": "status=preliminary"}]}
    assert "previous" in await _refused(client, topic(_url(), parts=[previous]))


async def test_event_triggers_are_refused(client) -> None:
    resource = topic(_url())
    resource["extension"].append({"url": XVER + "eventTrigger", "extension": [{"url": "resource", "valueUri": "x"}]})
    assert "eventTrigger" in await _refused(client, resource)


async def test_a_topic_needs_its_url(client) -> None:
    resource = topic(_url())
    resource["extension"] = resource["extension"][1:]
    await _refused(client, resource)


async def test_can_filter_by_must_name_a_search_parameter(client) -> None:
    await _refused(client, topic(_url(), can_filter_by=(("Observation", "no-such-param"),)))


async def test_a_bad_current_query_is_refused(client) -> None:
    await _refused(client, topic(_url(), current="no-such-param=1"), 400)


async def test_a_subscription_to_an_unknown_topic_is_refused(client) -> None:
    await _refused(client, topic_subscription(_url()))


async def test_a_filter_the_topic_does_not_allow_is_refused(client) -> None:
    url = _url()
    await create(client, topic(url))
    assert "cannot be filtered" in await _refused(client, topic_subscription(url, "Observation?status=final"))


async def test_a_filter_modifier_the_topic_does_not_allow_is_refused(client) -> None:
    url = _url()
    await create(client, topic(url))
    await _refused(client, topic_subscription(url, "Observation?code:text=abc"))


async def test_a_filter_on_a_type_the_topic_lacks_is_refused(client) -> None:
    url = _url()
    await create(client, topic(url))
    await _refused(client, topic_subscription(url, "Patient?name=x"))


async def test_a_backport_websocket_subscription_is_active_at_once(client, subscriptions) -> None:
    url = _url()
    await create(client, topic(url))
    made = await create(client, topic_subscription(url, kind="websocket"))
    subscriptions.append(made["id"])
    assert made["status"] == "active"


async def test_a_topic_subscription_is_notified_of_its_filtered_triggers(app, client, db, subscriptions) -> None:
    url = _url()
    await create(client, topic(url, interactions=("create",)))
    c = code()
    sid = (await create(client, topic_subscription(url, f"Observation?code=urn:test:events|{c}")))["id"]
    subscriptions.append(sid)
    other = await create(client, observation(code()))
    hit = await create(client, observation(c))
    res = await client.put(f"/Observation/{hit['id']}", json={**hit, "status": "amended"}, headers=FHIR_JSON)
    assert res.status_code == 200
    await wait_notified(db, sid, 1)
    await settle(app)
    rows = await notified(db, sid)
    assert [(r["resource_id"], r["interaction"]) for r in rows] == [(hit["id"], "create")]
    assert other["id"] not in {r["resource_id"] for r in rows}
    state = await db.fetchrow("SELECT topic, r4_style FROM subscription_state WHERE id = $1", sid)
    assert (state["topic"], state["r4_style"]) == (url, False)


async def test_a_topics_current_query_narrows_its_trigger(app, client, db, subscriptions) -> None:
    url = _url()
    await create(client, topic(url, current="status=final"))
    c = code()
    sid = (await create(client, topic_subscription(url, f"Observation?code=urn:test:events|{c}")))["id"]
    subscriptions.append(sid)
    await create(client, observation(c, status="preliminary"))
    final = await create(client, observation(c))
    await wait_notified(db, sid, 1)
    await settle(app)
    assert [r["resource_id"] for r in await notified(db, sid)] == [final["id"]]


async def test_a_filter_for_any_resource_of_the_topic_is_allowed(client, subscriptions) -> None:
    url = _url()
    await create(client, topic(url, can_filter_by=((None, "_lastUpdated"),)))
    made = await create(client, topic_subscription(url, "Observation?_lastUpdated=gt2020-01-01"))
    subscriptions.append(made["id"])


async def test_a_changed_topic_applies_to_its_subscriptions(app, client, db, subscriptions) -> None:
    url = _url()
    basic = await create(client, topic(url, interactions=("create",)))
    c = code()
    sid = (await create(client, topic_subscription(url, f"Observation?code=urn:test:events|{c}")))["id"]
    subscriptions.append(sid)
    changed = {**topic(url, interactions=("update",)), "id": basic["id"]}
    res = await client.put(f"/Basic/{basic['id']}", json=changed, headers=FHIR_JSON)
    assert res.status_code == 200, res.text
    obs = await create(client, observation(c))  # a create: no longer a trigger
    res = await client.put(f"/Observation/{obs['id']}", json={**obs, "status": "amended"}, headers=FHIR_JSON)
    await wait_notified(db, sid, 1)
    await settle(app)
    assert [r["interaction"] for r in await notified(db, sid)] == ["update"]


async def test_a_topic_change_that_would_refuse_a_subscriptions_filter_is_refused(client, subscriptions) -> None:
    url = _url()
    basic = await create(client, topic(url))
    sid = (await create(client, topic_subscription(url, f"Observation?code=urn:test:events|{code()}")))["id"]
    subscriptions.append(sid)
    narrower = {**topic(url, can_filter_by=(("Observation", "status"),)), "id": basic["id"]}
    res = await client.put(f"/Basic/{basic['id']}", json=narrower, headers=FHIR_JSON)
    assert res.status_code == 422, res.text
    assert sid in res.text
