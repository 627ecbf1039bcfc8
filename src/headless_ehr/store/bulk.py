"""Creating many resources in one statement: the bulk path of transactions and import.

Resources, history rows, outbox rows and every index table are each written by one
INSERT over unnest()ed arrays, so a 500-entry bundle costs one round trip and one
plan, instead of 500 of each.
"""

from __future__ import annotations

from datetime import datetime

from .sql import INDEX_TABLES


def _build() -> str:
    n = 6  # $1 types, $2 ids, $3 contents, $4 methods, $5 narratives, $6 content texts
    ctes = [
        """
WITH src AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[])
        AS u(rt, rid, content, method, narrative, fulltext)
), cur AS (
    INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content)
    SELECT rt, rid, 1, $7::timestamptz, false, content FROM src
    RETURNING 1
), hist AS (
    INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, content)
    SELECT rt, rid, 1, $7::timestamptz, method, content FROM src
), ob AS (
    INSERT INTO outbox (resource_type, id, version_id, method) SELECT rt, rid, 1, method FROM src
), txt AS (
    INSERT INTO search_text (resource_type, resource_id, narrative, content)
    SELECT rt, rid, to_tsvector('simple', narrative), to_tsvector('simple', fulltext) FROM src
)"""
    ]
    n = 8
    for field, table, columns in INDEX_TABLES:
        names = ", ".join(c for c, _ in columns)
        arrays = [f"${n}::text[]", f"${n + 1}::text[]"] + [f"${n + 2 + i}::{t}[]" for i, (_, t) in enumerate(columns)]
        ctes.append(
            f", ins_{field} AS (INSERT INTO {table} (resource_type, resource_id, {names})"
            f" SELECT * FROM unnest({', '.join(arrays)}))"
        )
        n += 2 + len(columns)
    return "".join(ctes) + "\nSELECT count(*) FROM cur"


INSERT_MANY = _build()


def insert_many_args(items: list[tuple[str, str, bytes, str, object]], ts: datetime) -> list[object]:
    """Arguments of INSERT_MANY from (type, id, content, method, IndexRows) items."""
    args: list[object] = [
        [i[0] for i in items],
        [i[1] for i in items],
        [i[2] for i in items],
        [i[3] for i in items],
        [getattr(i[4], "narrative", None) for i in items],
        [getattr(i[4], "content", None) for i in items],
        ts,
    ]
    for field, _table, columns in INDEX_TABLES:
        owners_t: list[str] = []
        owners_i: list[str] = []
        cols: list[list[object]] = [[] for _ in columns]
        for rtype, rid, _content, _method, rows in items:
            for row in getattr(rows, field):
                owners_t.append(rtype)
                owners_i.append(rid)
                for k in range(len(columns)):
                    cols[k].append(row[k])
        args += [owners_t, owners_i, *cols]
    return args
