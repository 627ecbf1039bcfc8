"""The connection pool: asyncpg's array checks are made cheap, and arrays still
encode exactly as before."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from headless_ehr.db import pool as pool_module


def test_fast_array_checks_are_in_force():
    # If an asyncpg upgrade renames what we patch, this fails rather than silently
    # losing the speed-up (the patch itself then changes nothing).
    assert pool_module.FAST_ARRAY_CHECKS


@pytest.mark.parametrize(
    ("value", "sql_type"),
    [
        (["a", None, "ü", ""], "text[]"),
        ([Decimal("1.50"), None, Decimal("-3e2")], "numeric[]"),
        ([datetime(2024, 3, 1, tzinfo=UTC), None], "timestamptz[]"),
        ([b"\x00\x01", None], "bytea[]"),
        ([[1, 2], [3, 4]], "int[]"),
        ((5, 6), "int[]"),
        ([], "text[]"),
    ],
)
async def test_array_parameters_round_trip(db, value, sql_type):
    assert await db.fetchval(f"SELECT $1::{sql_type}", value) == list(value)


async def test_a_string_is_not_taken_for_an_array(db):
    with pytest.raises(Exception, match="expected"):
        await db.fetchval("SELECT $1::text[]", "abc")


async def test_other_iterables_must_be_passed_as_lists(db):
    # The documented cost of the fast checks: a set is no longer taken for an array.
    with pytest.raises(Exception):  # noqa: B017 - asyncpg raises DataError or TypeError by version
        await db.fetchval("SELECT $1::text[]", {"a"})
