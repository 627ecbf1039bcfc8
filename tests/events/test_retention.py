"""Old events are removed in the background, but never one a reader or a subscription still needs."""

from __future__ import annotations

from headless_ehr.events.retention import remove_expired

from .conftest import code, create, observation, subscription, wait_notified

_AGE = "interval '30 days'"


async def _event_seq(db, rid: str) -> int:
    return await db.fetchval("SELECT seq FROM outbox WHERE id = $1", rid)


async def _age_event(db, seq: int) -> None:
    await db.execute(f"UPDATE outbox SET created_at = created_at - {_AGE} WHERE seq = $1", seq)


async def test_old_events_every_reader_passed_are_removed(app, client, db) -> None:
    obs = await create(client, observation(code()))
    fresh = await create(client, observation(code()))
    seq = await _event_seq(db, obs["id"])
    await _age_event(db, seq)
    await remove_expired(db, 7, batch=2)
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE seq = $1", seq) == 0
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE id = $1", fresh["id"]) == 1


async def test_an_event_a_reader_has_not_passed_is_kept(app, client, db) -> None:
    obs = await create(client, observation(code()))
    seq = await _event_seq(db, obs["id"])
    await _age_event(db, seq)
    await db.execute("INSERT INTO event_cursor (name, after_at, after_seq) VALUES ('test-slow-reader', '-infinity', 0)")
    try:
        await remove_expired(db, 7)
        assert await db.fetchval("SELECT count(*) FROM outbox WHERE seq = $1", seq) == 1
    finally:
        await db.execute("DELETE FROM event_cursor WHERE name = 'test-slow-reader'")
    await remove_expired(db, 7)
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE seq = $1", seq) == 0


async def _aged_notification(client, db, subscriptions, kind: str) -> str:
    c = code()
    sid = (await create(client, subscription(f"Observation?code=urn:test:events|{c}", kind=kind)))["id"]
    subscriptions.append(sid)
    await create(client, observation(c))
    await wait_notified(db, sid, 1)
    await db.execute(
        f"UPDATE subscription_notification SET occurred_at = occurred_at - {_AGE} WHERE subscription_id = $1", sid
    )
    return sid


async def _count(db, sid: str) -> int:
    return await db.fetchval("SELECT count(*) FROM subscription_notification WHERE subscription_id = $1", sid)


async def test_old_websocket_notifications_are_removed(client, db, subscriptions) -> None:
    sid = await _aged_notification(client, db, subscriptions, "websocket")
    await remove_expired(db, 7)
    assert await _count(db, sid) == 0


async def test_old_delivered_rest_hook_notifications_are_removed(client, db, subscriptions) -> None:
    sid = await _aged_notification(client, db, subscriptions, "rest-hook")
    await db.execute("UPDATE subscription_state SET delivered_through = 1 WHERE id = $1", sid)
    await remove_expired(db, 7)
    assert await _count(db, sid) == 0


async def test_undelivered_rest_hook_notifications_are_kept_however_old(client, db, subscriptions) -> None:
    sid = await _aged_notification(client, db, subscriptions, "rest-hook")
    await db.execute("UPDATE subscription_state SET status = 'error' WHERE id = $1", sid)
    await remove_expired(db, 7)
    assert await _count(db, sid) == 1


async def test_old_delivery_log_rows_are_removed(client, db, subscriptions) -> None:
    sid = (await create(client, subscription("Observation?status=final")))["id"]
    subscriptions.append(sid)
    await db.execute(
        "INSERT INTO subscription_delivery (subscription_id, event_number, kind, attempt, at, http_status)"
        f" VALUES ($1, 1, 'event-notification', 1, now() - {_AGE}, 200), ($1, 2, 'event-notification', 1, now(), 200)",
        sid,
    )
    await remove_expired(db, 7)
    numbers = await db.fetch("SELECT event_number FROM subscription_delivery WHERE subscription_id = $1", sid)
    assert [r["event_number"] for r in numbers] == [2]
