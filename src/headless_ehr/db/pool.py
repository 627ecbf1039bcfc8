"""The asyncpg connection pool."""

from __future__ import annotations

import asyncpg


async def _reset(conn: asyncpg.Connection) -> None:
    """Cheap release: our code leaves no session state behind (no SET, LISTEN or held
    advisory locks on pooled connections), so asyncpg's default reset query, one more
    round trip per statement run on the pool, is skipped; only a transaction left open
    by a failure is rolled back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10, custom_plans: bool = False) -> asyncpg.Pool:
    """A pool whose connections keep asyncpg's prepared-statement cache warm.

    custom_plans: plan every execution for its actual values (for search queries,
    whose best plan depends on how common each value is).
    """
    settings = {"application_name": "headless-ehr", "timezone": "UTC"}
    if custom_plans:
        settings["plan_cache_mode"] = "force_custom_plan"
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
