"""The asyncpg connection pool."""

from __future__ import annotations

from typing import Any

import asyncpg
import asyncpg.protocol.protocol as _protocol
import orjson


def _fast_array_checks() -> bool:
    """Make asyncpg's per-element array checks plain type checks.

    To find nested arrays, asyncpg asks `isinstance(element, collections.abc.Iterable)`
    (then Sized and Mapping) for every element of every array parameter, and each of
    those calls runs ABCMeta.__instancecheck__ in Python. Writes send their index rows
    as arrays (tens of elements per resource), and these checks were 40% of the client
    CPU of executing an import batch. Our array parameters are lists, with lists or
    tuples nested, so concrete types give the same answers at C speed. The cost: in
    this process asyncpg no longer takes a set, a dict view or a range as an array
    (pass a list), nor a non-dict Mapping as a record.
    Returns False (and changes nothing) if asyncpg no longer has these names.
    """
    names = ("IterableABC", "SizedABC", "MappingABC")
    if not all(hasattr(_protocol, name) for name in names):
        return False
    _protocol.IterableABC = (list, tuple)
    _protocol.SizedABC = (list, tuple)
    _protocol.MappingABC = dict
    return True


FAST_ARRAY_CHECKS = _fast_array_checks()


async def _reset(conn: asyncpg.Connection) -> None:
    """Cheap release: our code leaves no session state behind (no SET, LISTEN or held
    advisory locks on pooled connections), so asyncpg's default reset query, one more
    round trip per statement run on the pool, is skipped; only a transaction left open
    by a failure is rolled back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


APPLICATION = "headless-ehr"
# The audit recorder's own connections: their transactions write no resource rows, so
# write_watermark() (migrations 0009, 0020) does not wait for them.
AUDIT_APPLICATION = "headless-ehr-audit"
# The event workers' connections (events/): likewise, never a resource row (migration 0021).
EVENTS_APPLICATION = "headless-ehr-events"


def server_settings(
    *, custom_plans: bool = False, statement_timeout_ms: int | None = None, application_name: str = APPLICATION
) -> dict[str, str]:
    """The session settings of our connections."""
    # jit off: our statements are short index probes; JIT compiling them costs more than
    # it saves (tens of ms), and per-row access checks raise cost estimates past
    # jit_above_cost (docs/security.md, Access policies, Cost)
    settings = {"application_name": application_name, "timezone": "UTC", "jit": "off"}
    if custom_plans:
        settings["plan_cache_mode"] = "force_custom_plan"
    if statement_timeout_ms:
        settings["statement_timeout"] = str(statement_timeout_ms)
    return settings


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    custom_plans: bool = False,
    statement_timeout_ms: int | None = None,
    application_name: str = APPLICATION,
) -> asyncpg.Pool:
    """A pool whose connections keep asyncpg's prepared-statement cache warm.

    custom_plans: plan every execution for its actual values (for search queries,
    whose best plan depends on how common each value is).
    statement_timeout_ms: PostgreSQL cancels any statement running longer (raising
    asyncpg.QueryCanceledError), so one costly request cannot hold a connection and a
    core for ever; None or 0 for no limit (bulk import).
    """
    settings = server_settings(
        custom_plans=custom_plans, statement_timeout_ms=statement_timeout_ms, application_name=application_name
    )
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        statement_cache_size=512,
        max_inactive_connection_lifetime=300,
        reset=_reset,
        server_settings=settings,
    )
    assert pool is not None
    return pool


def jsonb_value(value: Any) -> Any:
    """A jsonb column's value: our pools read jsonb as text (no codec), a pool with one as the value."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value
