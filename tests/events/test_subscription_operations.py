# ruff: noqa: F811 (the live-server fixture is imported, and named as a parameter)
"""`$status` and `$events` (Subscriptions Backport IG 1.1), through the caller's rights."""

from __future__ import annotations

from headless_ehr.rest.operations.subscription_status import MAX_STATUSES
from tests.auth.world import observation
from tests.events.conftest import notification_status, status_values
from tests.events.websocket_support import (  # noqa: F401 (fixture)
    LiveServer,
    create_subscription,
    live,
    notify,
    post,
)

TOPIC = "http://example.org/topics/anything"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition"


async def test_status_of_one_subscription_is_a_searchset_of_its_status(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
        patient = await post(client, {"resourceType": "Patient"})
        for _ in range(2):
            await notify(db, sid, "Patient", patient)
        answer = await client.get(f"/Subscription/{sid}/$status")
    assert answer.status_code == 200
    bundle = answer.json()
    assert bundle["type"] == "searchset" and bundle["total"] == 1
    status = status_values(bundle["entry"][0]["resource"])
    assert status["type"] == "query-status" and status["status"] == "active"
    assert status["events-since-subscription-start"] == "2"
    assert status["subscription"] == {"reference": f"{live.base}/Subscription/{sid}"}


async def test_status_of_a_subscription_in_error_says_why(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, channel="rest-hook")
        await db.execute("UPDATE subscription_state SET status = 'error', error = 'endpoint gone' WHERE id = $1", sid)
        answer = await client.get(f"/Subscription/{sid}/$status")
    status = status_values(answer.json()["entry"][0]["resource"])
    assert status["status"] == "error" and status["error"] == {"text": "endpoint gone"}


async def test_type_level_status_lists_the_named_subscriptions_by_status(live: LiveServer, db):
    async with live.client() as client:
        active = await create_subscription(client, db)
        off = await create_subscription(client, db)
        await db.execute("UPDATE subscription_state SET status = 'off' WHERE id = $1", off)
        both = await client.get(f"/Subscription/$status?id={active},{off},no-such-one")
        only_off = await client.get(f"/Subscription/$status?id={active}&id={off}&status=off")
    listed = [status_values(e["resource"])["subscription"]["reference"] for e in both.json()["entry"]]
    assert listed == [f"{live.base}/Subscription/{active}", f"{live.base}/Subscription/{off}"]
    assert [status_values(e["resource"])["status"] for e in only_off.json()["entry"]] == ["off"]


async def test_type_level_status_leaves_out_subscriptions_the_caller_may_not_follow(live: LiveServer, db):
    async with live.client() as client:
        mine = await post(client, {"resourceType": "Patient"})
        theirs = await post(client, {"resourceType": "Patient"})
    async with live.client(live.token("patient/*.cruds", patient=mine)) as client:
        own = await create_subscription(client, db)
    async with live.client(live.token("patient/*.cruds", patient=theirs)) as client:
        other = await create_subscription(client, db)
    async with live.client(live.token("patient/*.rs", patient=mine)) as client:
        answer = await client.get(f"/Subscription/$status?id={own},{other}")
        refused = await client.get(f"/Subscription/{other}/$status")
    assert [status_values(e["resource"])["subscription"]["reference"] for e in answer.json()["entry"]] == [
        f"{live.base}/Subscription/{own}"
    ]
    assert refused.status_code == 404


async def test_status_of_an_unknown_subscription_is_404(live: LiveServer):
    async with live.client() as client:
        answer = await client.get("/Subscription/no-such-one/$status")
    assert answer.status_code == 404 and answer.json()["resourceType"] == "OperationOutcome"


async def test_status_by_post_takes_a_parameters_body(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db)
        body = {"resourceType": "Parameters", "parameter": [{"name": "id", "valueString": sid}]}
        answer = await client.post(
            "/Subscription/$status", json=body, headers={"Content-Type": "application/fhir+json"}
        )
    assert answer.status_code == 200 and answer.json()["total"] == 1


async def test_status_refuses_an_unknown_parameter(live: LiveServer, db):
    async with live.client() as client:
        answer = await client.get("/Subscription/$status?colour=blue")
    assert answer.status_code == 400


async def test_events_replays_notifications_by_number(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC, payload="id-only")
        patient = await post(client, {"resourceType": "Patient"})
        for _ in range(5):
            await notify(db, sid, "Patient", patient)
        answer = await client.get(f"/Subscription/{sid}/$events?eventsSinceNumber=2&eventsUntilNumber=4")
    assert answer.status_code == 200
    bundle = answer.json()
    status = status_values(bundle["entry"][0]["resource"])
    assert status["type"] == "query-event" and status["events-since-subscription-start"] == "5"
    assert [e["event-number"] for e in status["events"]] == ["2", "3", "4"]
    assert [e["fullUrl"] for e in bundle["entry"][1:]] == [f"{live.base}/Patient/{patient}"] * 3


async def test_events_without_bounds_gives_the_latest(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
        patient = await post(client, {"resourceType": "Patient"})
        for _ in range(3):
            await notify(db, sid, "Patient", patient)
        answer = await client.get(f"/Subscription/{sid}/$events")
    assert [e["event-number"] for e in notification_status(answer.json())["events"]] == ["1", "2", "3"]


async def test_events_are_bounded_per_call(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
        patient = await post(client, {"resourceType": "Patient"})
        await db.execute(
            "INSERT INTO subscription_notification (subscription_id, event_number, event_id, event_seq, resource_type,"
            " resource_id, version_id, interaction, occurred_at)"
            " SELECT $1, n, gen_random_uuid(), 0, 'Patient', $2, 1, 'create', now() FROM generate_series(1, 150) n",
            sid,
            patient,
        )
        await db.execute("UPDATE subscription_state SET events_since_start = 150 WHERE id = $1", sid)
        answer = await client.get(f"/Subscription/{sid}/$events?eventsSinceNumber=1")
    numbers = [e["event-number"] for e in notification_status(answer.json())["events"]]
    assert numbers == [str(n) for n in range(1, 101)]


async def test_events_with_full_resource_content_carry_each_events_version(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
        patient = await post(client, {"resourceType": "Patient", "gender": "female"})
        await client.put(f"/Patient/{patient}", json={"resourceType": "Patient", "id": patient, "gender": "male"})
        await notify(db, sid, "Patient", patient, 1)
        await notify(db, sid, "Patient", patient, 2, "update")
        answer = await client.get(f"/Subscription/{sid}/$events?content=full-resource")
    assert [e["resource"]["gender"] for e in answer.json()["entry"][1:]] == ["female", "male"]


async def test_events_leave_out_what_the_caller_may_not_read(live: LiveServer, db):
    async with live.client() as client:
        mine = await post(client, {"resourceType": "Patient"})
        theirs = await post(client, {"resourceType": "Patient"})
        their_obs = await post(client, observation(theirs, "laboratory", "x"))
        my_obs = await post(client, observation(mine, "laboratory", "x"))
    async with live.client(live.token("patient/*.cruds", patient=mine)) as client:
        sid = await create_subscription(client, db, topic=TOPIC, payload="full-resource")
        await notify(db, sid, "Observation", their_obs)
        await notify(db, sid, "Observation", my_obs)
    async with live.client(live.token("patient/*.rs", patient=mine)) as client:
        answer = await client.get(f"/Subscription/{sid}/$events")
    bundle = answer.json()
    assert [e["event-number"] for e in status_values(bundle["entry"][0]["resource"])["events"]] == ["2"]
    assert [e["resource"]["id"] for e in bundle["entry"][1:]] == [my_obs]


async def test_events_refuse_bounds_that_are_not_numbers_or_out_of_order(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
        words = await client.get(f"/Subscription/{sid}/$events?eventsSinceNumber=two")
        backwards = await client.get(f"/Subscription/{sid}/$events?eventsSinceNumber=5&eventsUntilNumber=2")
        content = await client.get(f"/Subscription/{sid}/$events?content=everything")
    assert (words.status_code, backwards.status_code, content.status_code) == (400, 400, 400)


async def test_events_is_not_a_type_level_operation(live: LiveServer):
    async with live.client() as client:
        answer = await client.get("/Subscription/$events")
    assert answer.status_code == 404


async def test_the_capability_statement_lists_the_operations_and_the_socket(live: LiveServer):
    async with live.client() as client:
        statement = (await client.get("/metadata")).json()
    rest = statement["rest"][0]
    subscription = next(r for r in rest["resource"] if r["type"] == "Subscription")
    definitions = {o["name"]: o["definition"] for o in subscription["operation"]}
    assert definitions["status"] == f"{BACKPORT}/backport-subscription-status"
    assert definitions["events"] == f"{BACKPORT}/backport-subscription-events"
    assert definitions["get-ws-binding-token"] == f"{BACKPORT}/backport-subscription-get-ws-binding-token"
    websocket = [e["valueUri"] for e in rest["extension"] if e["url"].endswith("capabilitystatement-websocket")]
    assert websocket == [live.ws_url]


async def test_events_of_a_subscription_without_any_is_an_empty_replay(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
        answer = await client.get(f"/Subscription/{sid}/$events")
    assert answer.status_code == 200
    status = status_values(answer.json()["entry"][0]["resource"])
    assert status["events"] == [] and status["events-since-subscription-start"] == "0"


async def test_type_level_status_without_ids_lists_the_callers_subscriptions(live: LiveServer, db):
    async with live.client() as client:
        mine = await post(client, {"resourceType": "Patient"})
    async with live.client(live.token("patient/*.cruds", patient=mine)) as client:
        sid = await create_subscription(client, db)
        answer = await client.get("/Subscription/$status?status=active")
    listed = [status_values(e["resource"])["subscription"]["reference"] for e in answer.json()["entry"]]
    assert listed == [f"{live.base}/Subscription/{sid}"]


async def test_type_level_status_by_status_finds_them_among_more_than_a_page(live: LiveServer, db):
    async with live.client() as client:
        mine = await post(client, {"resourceType": "Patient"})
    async with live.client(live.token("patient/*.cruds", patient=mine)) as client:
        first = await create_subscription(client, db)
        for _ in range(MAX_STATUSES):  # a page of others between them
            await create_subscription(client, db)
        last = await create_subscription(client, db)
        for sid in (first, last):
            off = {**(await client.get(f"/Subscription/{sid}")).json(), "status": "off"}
            assert (await client.put(f"/Subscription/{sid}", json=off)).status_code == 200
        answer = await client.get("/Subscription/$status?status=off")
    listed = {status_values(e["resource"])["subscription"]["reference"] for e in answer.json()["entry"]}
    assert listed == {f"{live.base}/Subscription/{sid}" for sid in (first, last)}


async def test_events_by_post_take_a_parameters_body(live: LiveServer, db):
    async with live.client() as client:
        sid = await create_subscription(client, db, topic=TOPIC)
        patient = await post(client, {"resourceType": "Patient"})
        for _ in range(3):
            await notify(db, sid, "Patient", patient)
        body = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "eventsSinceNumber", "valueString": "2"},
                {"name": "eventsUntilNumber", "valueString": "2"},
            ],
        }
        answer = await client.post(
            f"/Subscription/{sid}/$events", json=body, headers={"Content-Type": "application/fhir+json"}
        )
    assert [e["event-number"] for e in notification_status(answer.json())["events"]] == ["2"]
