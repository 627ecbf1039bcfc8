"""What the authorisation server and the admin API tell the audit trail: each endpoint fills
a SecurityEvent (audit/security_events.py builds the AuditEvent) and records it through the
app's AuditRecorder, batched off the request path. Recording never fails a request."""

from __future__ import annotations

import getpass
import logging
from typing import Any

import asyncpg
from starlette.requests import Request

from ..audit import security_events as se
from ..audit.recorder import AuditRecorder
from ..audit.security_events import SecurityEvent, security_event
from .ratelimit import client_address

log = logging.getLogger("headless_ehr.audit")


def event_of(request: Request) -> SecurityEvent | None:
    """The security event this request is filling in, if its endpoint records one."""
    return getattr(request.state, "security_event", None)


def begin(request: Request, event: SecurityEvent) -> SecurityEvent:
    """Start the request's event; the steps below the endpoint add what they learn (event_of)."""
    request.state.security_event = event
    return event


async def record(request: Request, event: SecurityEvent) -> None:
    """Queue the event's AuditEvent (a no-op with EHR_AUDIT=off); a failure is logged, never raised."""
    recorder = getattr(request.app.state, "audit", None)
    if recorder is None:
        return
    try:
        if event.address is None:
            event.address = client_address(request.scope, request.app.state.settings.trusted_proxies)
        await recorder.record(security_event(event))
    except Exception:
        log.exception("audit: could not record %s %s", request.method, request.url.path)


async def record_key_rotation(app: Any, kid: str) -> None:
    """A new token signing key (auth/keys.py): the server itself changed its security configuration."""
    recorder = getattr(app.state, "audit", None)
    if recorder is None:
        return
    event = SecurityEvent(se.SECURITY_ALERT, se.SECURITY_CONFIGURATION, 200, None, action="U")
    event.objects.append((se.admin_object("keys", kid), se.SECURITY_RESOURCE))
    try:
        await recorder.record(security_event(event))
    except Exception:
        log.exception("audit: could not record the rotation to signing key %s", kid)


async def record_command(pool: asyncpg.Pool, kind: str, key: str | None, why: str | None) -> None:
    """`ehr client create` / `ehr user create`, which write to the database without a server: the
    account made (or refused, with why), by the operating-system user who ran the command."""
    try:
        os_user = getpass.getuser()
    except (OSError, KeyError):  # no name for this uid (a container)
        os_user = "unknown"
    event = SecurityEvent(se.SECURITY_ALERT, se.USER_SECURITY_ATTRIBUTES_CHANGED, 400 if why else 201, None)
    event.action, event.os_user, event.description = "C", os_user, why
    if key:
        event.objects.append((se.admin_object(f"{kind}s", key), se.SECURITY_USER))
    recorder = AuditRecorder(pool)
    recorder.start()
    try:
        await recorder.record(security_event(event))
    finally:
        await recorder.close()  # flushes
