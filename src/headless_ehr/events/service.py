"""Starting a node's event workers: one plain sequence of start steps (app.py calls it
once the store and policies exist). Each step registers its own shutdown on `stack`, so
a failed later step or a shutdown closes everything in reverse order."""

from __future__ import annotations

import contextlib
import logging

from starlette.applications import Starlette

from ..config import Settings
from ..db.periodic import Periodic
from ..db.pool import EVENTS_APPLICATION, create_pool
from ..store.hooks import Hooks
from .broker import BrokerPublisher
from .delivery import start_delivery
from .lifecycle import SubscriptionHook, TopicHook, end_expired
from .relay import Relay
from .retention import remove_expired
from .websocket import start_websockets

log = logging.getLogger("headless_ehr.events")

RETENTION_SECONDS = 3600.0  # old events are removed hourly (and at start)
END_SECONDS = 5.0  # how soon a Subscription past its `end` is set off


def store_hooks() -> Hooks:
    """The write hooks events/ gives the store (app.py, `ehr import`)."""
    return {"Subscription": SubscriptionHook(), "Basic": TopicHook()}


async def start_events(app: Starlette, stack: contextlib.AsyncExitStack, settings: Settings) -> None:
    """Start the event workers of this node; app.state.events_pool, app.state.relay."""
    assert settings.database_url
    store, policies = app.state.store, app.state.policies
    pool = await create_pool(
        settings.database_url,
        min_size=1,
        max_size=4,
        statement_timeout_ms=settings.statement_timeout_ms,
        application_name=EVENTS_APPLICATION,
    )
    stack.push_async_callback(pool.close)
    app.state.events_pool = pool

    relay = Relay(pool, store, policies, settings.database_url)
    await relay.start()
    stack.push_async_callback(relay.close)
    app.state.relay = relay

    await start_delivery(app, stack, settings, pool)  # rest-hook deliveries: app.state.delivery

    async def retain() -> None:
        await remove_expired(pool, settings.event_retention_days)

    retention = Periodic(RETENTION_SECONDS, retain, log, "removing old events failed; trying again later")
    await retention.start()
    stack.push_async_callback(retention.close)

    async def end() -> None:
        await end_expired(store, pool)

    ender = Periodic(END_SECONDS, end, log, "setting ended Subscriptions off failed; trying again later")
    await ender.start()
    stack.push_async_callback(ender.close)

    if settings.nats_url:  # every committed change onto the JetStream stream (events/broker.py)
        app.state.broker = broker = BrokerPublisher(
            settings.database_url, settings.nats_url, settings.nats_stream, settings.nats_subject_prefix
        )
        await broker.start()  # NATS may still be down: it keeps trying, and the server serves meanwhile
        stack.push_async_callback(broker.close)
    await start_websockets(app, stack, settings)  # the WebSocket channel's fan-out (events/websocket.py)
