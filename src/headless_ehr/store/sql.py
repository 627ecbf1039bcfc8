"""The store's SQL, one statement per write so a write is one round trip.

Data-modifying CTEs share one snapshot: the history row, the outbox row and the
search index rows are written only when the `cur` step changed the resource row,
all atomically. Index rows travel as one array per column (unnest), so the number
of rows never changes the statement text; tables without rows are left out, and
each shape of statement is prepared once per connection.
"""

from __future__ import annotations

from functools import cache

from ..audit.pending import PENDING_COLUMNS, PENDING_TYPES
from ..search.rows import CONTAINED_COLUMNS

# (table, [(column, SQL type)]) for the typed index tables, in IndexRows field order.
INDEX_TABLES: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "token",
        "search_token",
        [("param", "text"), ("system", "text"), ("code", "text"), ("text", "text")],
    ),
    ("string", "search_string", [("param", "text"), ("value", "text"), ("exact", "text")]),
    (
        "reference",
        "search_reference",
        [
            ("param", "text"),
            ("target_type", "text"),
            ("target_id", "text"),
            ("target_version", "text"),
            ("url", "text"),
        ],
    ),
    ("date", "search_date", [("param", "text"), ("low", "timestamptz"), ("high", "timestamptz")]),
    (
        "number",
        "search_number",
        [("param", "text"), ("value", "numeric"), ("low", "numeric"), ("high", "numeric")],
    ),
    (
        "quantity",
        "search_quantity",
        [
            ("param", "text"),
            ("value", "numeric"),
            ("low", "numeric"),
            ("high", "numeric"),
            ("system", "text"),
            ("code", "text"),
            ("unit", "text"),
            ("canon_value", "numeric"),
            ("canon_code", "text"),
        ],
    ),
    ("uri", "search_uri", [("param", "text"), ("uri", "text")]),
    ("composite", "search_composite", [("param", "text"), ("components", "jsonb")]),
    ("position", "search_position", [("param", "text"), ("latitude", "float8"), ("longitude", "float8")]),
    ("contained", "search_contained", CONTAINED_COLUMNS),
    (
        "consent",
        "search_consent",
        [
            ("patient_id", "text"),
            ("node", "integer"),
            ("depth", "integer"),
            ("decision", "text"),
            ("conditions", "jsonb"),
        ],
    ),
]
# $1 type, $2 id, $3 version, $4 where in $5 the lastUpdated placeholder starts (1-based;
# reindex: the current last_updated), $5 content (NULL for a deletion), $6 method
FIXED_ARGS = 6
Mask = tuple[bool, ...]  # which index tables get rows, in INDEX_TABLES order


def _inserts(mask: Mask) -> tuple[str, int]:
    """Insert CTEs for the tables in mask (empty ones are left out of the statement)
    and the text index; returns them and the number of the next free parameter."""
    n = FIXED_ARGS + 1
    ctes = []
    for used, (field, table, columns) in zip(mask, INDEX_TABLES, strict=True):
        if not used:
            continue
        names = ", ".join(c for c, _ in columns)
        arrays = ", ".join(f"${n + i}::{t}[]" for i, (_, t) in enumerate(columns))
        aliases = ", ".join(f"c{i}" for i in range(len(columns)))
        ctes.append(
            f", ins_{field} AS (INSERT INTO {table} (resource_type, resource_id, {names})"
            f" SELECT $1, $2, {aliases} FROM cur, unnest({arrays}) AS t({aliases}))"
        )
        n += len(columns)
    ctes.append(
        f", ins_text AS (INSERT INTO search_text (resource_type, resource_id, narrative, content)"
        f" SELECT $1, $2, to_tsvector('simple', ${n}::text), to_tsvector('simple', ${n + 1}::text)"
        f" FROM cur WHERE $5::bytea IS NOT NULL"
        f" ON CONFLICT (resource_type, resource_id) DO UPDATE"
        f" SET narrative = EXCLUDED.narrative, content = EXCLUDED.content)"
    )
    return "".join(ctes), n + 2


# Deleting a version's rows: every table, since the old version's rows are not known.
_DELETES = "".join(
    f", del_{field} AS (DELETE FROM {table}"
    f" WHERE resource_type = $1 AND resource_id = $2 AND EXISTS (SELECT 1 FROM cur))"
    for field, table, _ in INDEX_TABLES
) + (
    ", del_text AS (DELETE FROM search_text WHERE resource_type = $1 AND resource_id = $2"
    " AND $5::bytea IS NULL AND EXISTS (SELECT 1 FROM cur))"
)

# The database's clock stamps every write (never the application's): `ts` for the
# rows' last_updated and the same instant as text for meta.lastUpdated in the stored
# bytes, so the column and the JSON agree to the microsecond. The transaction id is
# taken first, so a writer shows in pg_stat_activity.backend_xid before its timestamp
# exists; write_watermark() (migration 0009) relies on that order.
STAMP = """
t AS MATERIALIZED (
    SELECT ts, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') AS ts_text
    FROM (
        -- the CASE makes the clock wait for the id (pg_current_xact_id() is stable: an
        -- unused column holding it would be planned away)
        SELECT CASE WHEN x IS NOT NULL THEN clock_timestamp() END AS ts
        FROM (SELECT pg_current_xact_id() AS x OFFSET 0) AS xid
    ) AS stamp
)"""
STAMP_LENGTH = 32  # len("2026-01-02T03:04:05.123456+00:00")

_STAMPED = (
    "WITH"
    + STAMP
    + f""", v AS MATERIALIZED (
    SELECT ts, ts_text, overlay($5::bytea PLACING convert_to(ts_text, 'UTF8') FROM $4::integer FOR {STAMP_LENGTH})
        AS content
    FROM t
)"""
)

_HISTORY = """
, hist AS (
    INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, content)
    SELECT $1, $2, $3, v.ts, $6, v.content FROM cur, v
)"""
_OUTBOX = """
, ob AS (
    INSERT INTO outbox (resource_type, id, version_id, method, created_at) SELECT $1, $2, $3, $6, v.ts FROM cur, v
)"""
_RESULT = "\nSELECT ts, ts_text FROM v WHERE EXISTS (SELECT 1 FROM cur)"


def _audit(first: int) -> str:
    """The write's AuditEvent into audit_pending (audit/pending.py), only when it wrote."""
    params = ", ".join(f"${first + i}::{t}" for i, t in enumerate(PENDING_TYPES))
    return f", aud AS (INSERT INTO audit_pending ({PENDING_COLUMNS}) SELECT {params} FROM cur)"


@cache
def write_statement(kind: str, mask: Mask, audited: bool = False, events: bool = True) -> str:
    """The one statement of a write.

    insert: a new resource (version 1, or a client id); update: replace the version
    given as the last parameter; reindex: rewrite the index rows of the version in $3.
    insert and update answer the write's timestamp and its text (no row: nothing
    written); reindex answers how many rows it rewrote. audited: the write's AuditEvent
    follows as the last parameters (audit/pending.py `pending_args`). events: its outbox
    row too (False only for `ehr import --no-events`).
    """
    history_and_outbox = _HISTORY + (_OUTBOX if events else "")
    inserts, last = _inserts(mask)
    if audited:
        inserts += _audit(last if kind == "insert" else last + 1)
    if kind == "insert":
        head = (
            _STAMPED + ", cur AS (INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content)"
            " SELECT $1, $2, $3, v.ts, $5::bytea IS NULL, v.content FROM v"
            " ON CONFLICT (resource_type, id) DO NOTHING RETURNING 1)"
        )
        return head + history_and_outbox + inserts + _RESULT
    if kind == "update":
        head = (
            _STAMPED + ", cur AS (UPDATE resource"
            " SET version_id = $3, last_updated = v.ts, deleted = $5::bytea IS NULL, content = v.content FROM v"
            f" WHERE resource_type = $1 AND id = $2 AND version_id = ${last} RETURNING 1)"
        )
        return head + _DELETES + history_and_outbox + inserts + _RESULT
    assert kind == "reindex"
    head = (
        "WITH cur AS (SELECT 1 FROM resource"
        " WHERE resource_type = $1 AND id = $2 AND version_id = $3::integer AND NOT deleted"
        " AND $4::timestamptz IS NOT NULL AND $6::text IS NOT NULL FOR UPDATE)"
    )
    return head + _DELETES + inserts + "\nSELECT count(*) FROM cur"


READ_CURRENT = """
SELECT version_id, last_updated, content FROM resource WHERE resource_type = $1 AND id = $2
"""

READ_CURRENT_FOR_UPDATE = READ_CURRENT + " FOR UPDATE"

# A read of a Patient by id that queues its own AuditEvent, only when it finds a live
# resource: the event commits with the statement, before the response exists. It queues
# the event's own parts (a new id, the time, the Patient's id $2) with the caller's template
# ($3, audit_read_template: the chaining composes the event, migration 0026), and only when
# that template row exists; the fourth column says whether it did. $4: whether to wait for
# the disk flush.
READ_CURRENT_AUDITED = """
WITH r AS (SELECT version_id, last_updated, content FROM resource WHERE resource_type = $1 AND id = $2),
aud AS (
    INSERT INTO audit_read_pending (id, recorded, template, patient)
    SELECT gen_random_uuid(), clock_timestamp(), t.id, $2
    FROM r, audit_read_template t
    WHERE t.id = $3 AND r.content IS NOT NULL
        AND ($4::boolean OR set_config('synchronous_commit', 'off', true) IS NOT NULL)
    RETURNING 1
)
SELECT version_id, last_updated, content, EXISTS (SELECT FROM aud) FROM r
"""

READ_VERSION = """
SELECT version_id, last_updated, content, method FROM resource_history
WHERE resource_type = $1 AND id = $2 AND version_id = $3
"""

# several versions at once (webhook deliveries of a batch of events)
READ_VERSIONS = """
SELECT h.resource_type, h.id, h.version_id, h.last_updated, h.content, h.method
FROM unnest($1::text[], $2::text[], $3::int[]) AS k(t, i, v)
JOIN resource_history h ON h.resource_type = k.t AND h.id = k.i AND h.version_id = k.v
"""

HISTORY_COLUMNS = "resource_type, id, version_id, last_updated, content, method, seq"
