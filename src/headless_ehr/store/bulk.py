"""Creating many resources in one statement: the bulk path of transactions and import.

Resources, history rows, outbox rows and every index table are each written by one
INSERT over unnest()ed arrays, so a 500-entry bundle costs one round trip and one
plan, instead of 500 of each. `ehr import --no-events` leaves the outbox out.
"""

from __future__ import annotations

from .sql import INDEX_TABLES, STAMP, STAMP_LENGTH

_OUTBOX = """, ob AS (
    INSERT INTO outbox (resource_type, id, version_id, method, created_at) SELECT rt, rid, 1, method, t.ts FROM src, t
)"""


def _build(events: bool = True) -> str:
    # $1 types, $2 ids, $3 contents (meta.lastUpdated a placeholder), $4 methods,
    # $5 narratives, $6 content texts, $7 where each placeholder starts (1-based)
    ctes = [
        "WITH"
        + STAMP
        + f""", src AS MATERIALIZED (
    SELECT rt, rid, overlay(content PLACING convert_to(t.ts_text, 'UTF8') FROM stamp_at FOR {STAMP_LENGTH}) AS content,
        method, narrative, fulltext
    FROM t, unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[], $7::integer[])
        AS u(rt, rid, content, method, narrative, fulltext, stamp_at)
), cur AS (
    INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content)
    SELECT rt, rid, 1, t.ts, false, content FROM src, t
    RETURNING 1
), hist AS (
    INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, content)
    SELECT rt, rid, 1, t.ts, method, content FROM src, t
)"""
        + (_OUTBOX if events else "")
        + """, txt AS (
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
    return "".join(ctes) + "\nSELECT ts, ts_text FROM t WHERE EXISTS (SELECT 1 FROM cur)"


# Answers the one timestamp of every resource it wrote, and its text.
INSERT_MANY = _build()
# The same without outbox rows: `ehr import --no-events`, an initial load nobody is notified of.
INSERT_MANY_WITHOUT_EVENTS = _build(events=False)


def insert_many_args(items: list[tuple[str, str, bytes, str, object, int]]) -> list[object]:
    """Arguments of INSERT_MANY from (type, id, content, method, IndexRows, placeholder
    offset) items."""
    args: list[object] = [
        [i[0] for i in items],
        [i[1] for i in items],
        [i[2] for i in items],
        [i[3] for i in items],
        [getattr(i[4], "narrative", None) for i in items],
        [getattr(i[4], "content", None) for i in items],
        [i[5] + 1 for i in items],
    ]
    for field, _table, columns in INDEX_TABLES:
        owners_t: list[str] = []
        owners_i: list[str] = []
        cols: list[list[object]] = [[] for _ in columns]
        for rtype, rid, _content, _method, rows, _stamp_at in items:
            for row in getattr(rows, field):
                owners_t.append(rtype)
                owners_i.append(rid)
                for k in range(len(columns)):
                    cols[k].append(row[k])
        args += [owners_t, owners_i, *cols]
    return args
