"""A Subscription asks only for what the server can do: refusals at create are OperationOutcomes."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from headless_ehr.events.subscription import HEARTBEAT_PERIOD, PAYLOAD_CONTENT, SECRET

from .conftest import FHIR_JSON, HOOK, code, create, subscription

SECRET_OK = "whsec_" + base64.b64encode(b"k" * 32).decode()


async def _refused(client, resource: dict[str, Any], status: int) -> str:
    res = await client.post("/Subscription", json=resource, headers=FHIR_JSON)
    assert res.status_code == status, res.text
    body = res.json()
    assert body["resourceType"] == "OperationOutcome"
    return " ".join(i.get("diagnostics", "") for i in body["issue"])


async def test_an_r4_subscription_is_active_once_checked(client, db, subscriptions) -> None:
    made = await create(client, subscription("Observation?status=final"))
    subscriptions.append(made["id"])
    assert made["status"] == "active"
    state = await db.fetchrow(
        "SELECT status, channel, endpoint, payload, r4_style FROM subscription_state WHERE id = $1", made["id"]
    )
    assert dict(state) == {
        "status": "active",
        "channel": "rest-hook",
        "endpoint": HOOK,
        "payload": "empty",
        "r4_style": True,
    }


async def test_an_unknown_search_parameter_is_refused(client) -> None:
    await _refused(client, subscription("Observation?no-such-param=1"), 400)


async def test_a_malformed_search_value_is_refused(client) -> None:
    await _refused(client, subscription("Observation?date=yesterday"), 400)


async def test_result_parameters_are_refused_in_criteria(client) -> None:
    await _refused(client, subscription("Observation?status=final&_count=1"), 400)


async def test_criteria_must_name_a_resource_type(client) -> None:
    await _refused(client, subscription("NoSuchType?status=final"), 400)


@pytest.mark.parametrize("channel", ["email", "sms", "message"])
async def test_channels_other_than_rest_hook_and_websocket_are_refused(client, channel) -> None:
    resource = subscription("Observation", kind=channel)
    resource["channel"]["endpoint"] = "mailto:someone@example.org"
    assert "rest-hook or websocket" in await _refused(client, resource, 422)


@pytest.mark.parametrize("endpoint", ["ftp://example.org/hook", "file:///etc/passwd", "example.org/hook", "http://"])
async def test_a_rest_hook_endpoint_must_be_http_or_https(client, endpoint) -> None:
    await _refused(client, subscription("Observation", channel={"endpoint": endpoint}), 422)


@pytest.mark.parametrize(
    "endpoint", ["http://[::1/hook", "http://example.org:99999/hook", "https://example.org:x/hook"]
)
async def test_a_rest_hook_endpoint_the_delivery_cannot_request_is_refused(client, endpoint) -> None:
    await _refused(client, subscription("Observation", channel={"endpoint": endpoint}), 422)


async def test_a_rest_hook_needs_an_endpoint(client) -> None:
    resource = subscription("Observation")
    del resource["channel"]["endpoint"]
    await _refused(client, resource, 422)


async def test_a_payload_we_cannot_send_is_refused(client) -> None:
    await _refused(client, subscription("Observation", channel={"payload": "application/fhir+xml"}), 422)


@pytest.mark.parametrize(
    ("payload", "content", "expected"),
    [
        (None, None, "empty"),
        ("application/fhir+json", None, "full-resource"),
        ("application/fhir+json", "id-only", "id-only"),
        ("application/fhir+json", "full-resource", "full-resource"),
        (None, "empty", "empty"),
    ],
)
async def test_the_payload_content_is_read_from_r4_or_the_backport_extension(
    client, db, subscriptions, payload, content, expected
) -> None:
    channel: dict[str, Any] = {}
    if payload is not None:
        channel["payload"] = payload
    if content is not None:
        channel["_payload"] = {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": content}]}
    made = await create(client, subscription("Observation?status=final", channel=channel))
    subscriptions.append(made["id"])
    assert await db.fetchval("SELECT payload FROM subscription_state WHERE id = $1", made["id"]) == expected


async def test_an_unknown_payload_content_code_is_refused(client) -> None:
    channel = {
        "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": "everything"}]},
    }
    await _refused(client, subscription("Observation", channel=channel), 422)


async def test_the_signing_secret_is_kept(client, db, subscriptions) -> None:
    made = await create(
        client, subscription("Observation?status=final", extension=[{"url": SECRET, "valueString": SECRET_OK}])
    )
    subscriptions.append(made["id"])
    assert await db.fetchval("SELECT secret FROM subscription_state WHERE id = $1", made["id"]) == SECRET_OK


@pytest.mark.parametrize("secret", ["not-whsec", "whsec_!!!not base64", "whsec_" + base64.b64encode(b"short").decode()])
async def test_a_malformed_secret_is_refused(client, secret) -> None:
    resource = subscription("Observation", extension=[{"url": SECRET, "valueString": secret}])
    await _refused(client, resource, 422)


async def test_headers_are_kept_and_bounded(client, db, subscriptions) -> None:
    made = await create(client, subscription("Observation?status=final", channel={"header": ["X-Tenant: 7"]}))
    subscriptions.append(made["id"])
    assert await db.fetchval("SELECT headers FROM subscription_state WHERE id = $1", made["id"]) == '["X-Tenant: 7"]'
    await _refused(client, subscription("Observation", channel={"header": [f"X-{i}: 1" for i in range(11)]}), 422)


@pytest.mark.parametrize("header", ["no colon", "webhook-signature: forged", "X-A: b\r\nX-B: c", "Bad Name: 1"])
async def test_a_malformed_or_reserved_header_is_refused(client, header) -> None:
    await _refused(client, subscription("Observation", channel={"header": [header]}), 422)


@pytest.mark.parametrize("header", ["Connection: close", "Transfer-Encoding: chunked", "Expect: 100-continue"])
async def test_a_header_the_delivery_would_not_send_is_refused_at_create(client, header) -> None:
    await _refused(client, subscription("Observation", channel={"header": [header]}), 422)


async def test_the_heartbeat_period_is_kept_and_bounded(client, db, subscriptions) -> None:
    ext = {"extension": [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": 60}]}
    made = await create(client, subscription("Observation?status=final", channel=ext))
    subscriptions.append(made["id"])
    assert await db.fetchval("SELECT heartbeat_seconds FROM subscription_state WHERE id = $1", made["id"]) == 60
    bad = {"extension": [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": 10**6}]}
    await _refused(client, subscription("Observation", channel=bad), 422)


async def test_a_client_cannot_set_status_error(client) -> None:
    resource = subscription("Observation?status=final", status="error")
    assert "set by the server" in await _refused(client, resource, 422)


async def test_a_subscription_whose_end_has_passed_is_off(client, subscriptions) -> None:
    made = await create(client, subscription("Observation?status=final", end="2021-01-01T00:00:00Z"))
    subscriptions.append(made["id"])
    assert made["status"] == "off"


async def test_a_websocket_subscription_needs_no_endpoint(client, subscriptions) -> None:
    made = await create(client, subscription("Observation?status=final", kind="websocket"))
    subscriptions.append(made["id"])
    assert made["status"] == "active"


async def test_a_refused_subscription_in_a_transaction_fails_the_whole_bundle(client) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": subscription("Observation", channel={"endpoint": "ftp://x"}),
                "request": {"method": "POST", "url": "Subscription"},
            },
        ],
    }
    res = await client.post("/", json=bundle, headers=FHIR_JSON)
    assert res.status_code == 422, res.text


async def test_a_subscription_created_in_a_batch_gets_its_state(client, db, subscriptions) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": subscription("Observation?status=final"), "request": {"method": "POST", "url": "Subscription"}}
        ],
    }
    res = await client.post("/", json=bundle, headers=FHIR_JSON)
    assert res.status_code == 200, res.text
    sid = res.json()["entry"][0]["response"]["location"].split("/")[1]
    subscriptions.append(sid)
    assert await db.fetchval("SELECT status FROM subscription_state WHERE id = $1", sid) == "active"


async def test_a_conditional_create_of_a_subscription_gets_its_state(client, db, subscriptions) -> None:
    endpoint = f"{HOOK}/{code()}"
    resource = subscription("Observation?status=final", channel={"endpoint": endpoint})
    headers = {**FHIR_JSON, "If-None-Exist": f"url={endpoint}"}
    res = await client.post("/Subscription", json=resource, headers=headers)
    assert res.status_code == 201, res.text
    subscriptions.append(res.json()["id"])
    assert await db.fetchval("SELECT status FROM subscription_state WHERE id = $1", res.json()["id"]) == "active"


@pytest.mark.parametrize("end", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
async def test_an_end_out_of_range_in_utc_is_refused(client, end) -> None:
    await _refused(client, subscription("Observation", end=end), 422)
