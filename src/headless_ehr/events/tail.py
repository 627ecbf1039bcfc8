"""`ehr events tail [--type T]`: the changes as they commit, one line each, until Ctrl-C.

With EHR_NATS_URL set it follows the JetStream stream (an ordered, ephemeral consumer of
new messages: it leaves nothing behind on the broker); otherwise it follows the outbox
itself (committed events after the moment it started, woken by the outbox NOTIFY).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
import nats.errors
import orjson
from nats.js.api import DeliverPolicy

from ..db.pool import EVENTS_APPLICATION, server_settings
from .broker import connect, ensure_stream, message_of
from .outbox import NOTIFY_CHANNEL, Event, Position, settled_after

_BATCH = 500
_FALLBACK_SECONDS = 2.0  # read the outbox this often even without a NOTIFY

CONNECT_SECONDS = 5  # a tail with no NATS to follow says so, rather than wait
Print = Callable[[str], None]


class Unreachable(Exception):
    """The broker or the database cannot be reached."""


def line_of(body: dict[str, Any]) -> str:
    """One event as a line: time, interaction, versioned reference, sequence number, event id."""
    reference = f"{body.get('resourceType')}/{body.get('resourceId')}/_history/{body.get('versionId')}"
    interaction = str(body.get("interaction"))
    return f"{body.get('time')}  {interaction:<6}  {reference}  seq={body.get('seq')}  id={body.get('id')}"


async def tail_stream(nats_url: str, stream: str, prefix: str, resource_type: str | None, out: Print) -> None:
    """Follow the stream's new messages (of one resource type, when given: a checked type
    name, which is a valid subject token)."""
    try:
        nc = await asyncio.wait_for(connect(nats_url, name="ehr-events-tail"), CONNECT_SECONDS)
    except TimeoutError:
        raise Unreachable(f"no NATS answered at EHR_NATS_URL within {CONNECT_SECONDS} s") from None
    try:
        js = nc.jetstream()
        await ensure_stream(js, stream, prefix)
        subject = f"{prefix}.{resource_type or '*'}.*"
        sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
        print(f"following NATS stream {stream} ({subject}); Ctrl-C to stop", file=sys.stderr, flush=True)
        async for msg in sub.messages:
            try:
                body = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                body = None
            out(line_of(body) if isinstance(body, dict) else f"{msg.subject}  {msg.data[:200]!r}")
    finally:
        await nc.close()


async def tail_outbox(database_url: str, resource_type: str | None, out: Print) -> None:
    """Follow the outbox: events committed after now, in commit order."""
    conn = await asyncpg.connect(database_url, server_settings=server_settings(application_name=EVENTS_APPLICATION))
    try:
        wake = asyncio.Event()
        await conn.add_listener(NOTIFY_CHANNEL, lambda *_: wake.set())
        position: Position = (await conn.fetchval("SELECT write_watermark()"), 0)
        what = f"{resource_type} events" if resource_type else "events"
        print(f"following the outbox ({what}; no EHR_NATS_URL); Ctrl-C to stop", file=sys.stderr, flush=True)
        while True:
            wake.clear()
            events = await settled_after(conn, position, _BATCH)
            for event in events:
                if resource_type is None or event.resource_type == resource_type:
                    out(_line(event))
            if events:
                position = events[-1].position
            if len(events) < _BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), _FALLBACK_SECONDS)
    finally:
        await conn.close()


def _line(event: Event) -> str:
    return line_of(orjson.loads(message_of(event)))


def print_line(text: str) -> None:
    print(text, flush=True)


def run_tail(follow: Coroutine[Any, Any, None]) -> int:
    """Run tail_stream() or tail_outbox() until interrupted: 0 on Ctrl-C, 1 when the
    broker or database cannot be reached (or goes away)."""
    try:
        asyncio.run(follow)
    except KeyboardInterrupt:
        return 0
    except Unreachable as exc:
        print(f"ehr events tail: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, nats.errors.Error) as exc:
        print(f"ehr events tail: {exc!r}", file=sys.stderr)
        return 1
    return 0
