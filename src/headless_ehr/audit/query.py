"""Searching the audit log: AuditEvent search parameters compiled to SQL over audit_event's
search columns (each repeated parameter ANDed, comma-separated values ORed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

# parameter -> (column, how): `any` matches a value in a text[] column, `eq` a text column
ARRAY_PARAMS = {"patient": "patients", "agent": "agents", "entity": "entities"}
TEXT_PARAMS = {"subtype": "subtype", "outcome": "outcome", "action": "action", "address": "address"}


@dataclass
class AuditQuery:
    """The WHERE clauses of one audit search, with their arguments."""

    clauses: list[str] = field(default_factory=list)
    args: list[object] = field(default_factory=list)

    def _arg(self, value: object) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def any_of(self, param: str, values: list[str]) -> None:
        """The record's column holds one of the values."""
        if param in ARRAY_PARAMS:
            self.clauses.append(f"{ARRAY_PARAMS[param]} && {self._arg(values)}::text[]")
        else:
            self.clauses.append(f"{TEXT_PARAMS[param]} = ANY({self._arg(values)}::text[])")

    def ids(self, values: list[str]) -> None:
        self.clauses.append(f"id::text = ANY({self._arg(values)}::text[])")

    def recorded(self, op: str, moment: datetime) -> None:
        assert op in ("<", "<=", ">", ">=")
        self.clauses.append(f"recorded {op} {self._arg(moment)}")

    def recorded_any(self, ranges: list[tuple[datetime, datetime]]) -> None:
        """`date=2026-12-01`: recorded within one of the closed intervals."""
        parts = [f"recorded BETWEEN {self._arg(low)} AND {self._arg(high)}" for low, high in ranges]
        self.clauses.append("(" + " OR ".join(parts) + ")")

    async def page(
        self, conn: asyncpg.Connection | asyncpg.Pool, limit: int, after: int | None, descending: bool
    ) -> list[asyncpg.Record]:
        """Up to limit records past the cursor (a seq), in seq order (or its reverse)."""
        clauses = list(self.clauses)
        if after is not None:
            clauses.append(f"seq {'<' if descending else '>'} {self._arg(after)}")
        where = " AND ".join(clauses) or "true"
        order = "DESC" if descending else "ASC"
        sql = f"SELECT seq, id, content FROM audit_event WHERE {where} ORDER BY seq {order} LIMIT {int(limit)}"
        return await conn.fetch(sql, *self.args)
