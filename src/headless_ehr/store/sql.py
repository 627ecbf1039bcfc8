"""The store's SQL, one statement per write so a write is one round trip.

Data-modifying CTEs share one snapshot: the history row, the outbox row and the
search index rows are written only when the `cur` step changed the resource row,
all atomically. Index rows travel as one array per column (unnest), so the number
of rows never changes the statement text and its prepared plan is reused.
"""

from __future__ import annotations

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
]
FIXED_ARGS = 6  # $1 type, $2 id, $3 version, $4 last_updated, $5 content, $6 method


def _index_ctes() -> tuple[str, str, int]:
    """(insert CTEs, delete CTEs, number of the next free parameter)."""
    n = FIXED_ARGS + 1
    inserts, deletes = [], []
    for field, table, columns in INDEX_TABLES:
        names = ", ".join(c for c, _ in columns)
        arrays = ", ".join(f"${n + i}::{t}[]" for i, (_, t) in enumerate(columns))
        aliases = ", ".join(f"c{i}" for i in range(len(columns)))
        inserts.append(
            f", ins_{field} AS (INSERT INTO {table} (resource_type, resource_id, {names})"
            f" SELECT $1, $2, {aliases} FROM cur, unnest({arrays}) AS t({aliases}))"
        )
        deletes.append(
            f", del_{field} AS (DELETE FROM {table}"
            f" WHERE resource_type = $1 AND resource_id = $2 AND EXISTS (SELECT 1 FROM cur))"
        )
        n += len(columns)
    narrative, content = n, n + 1
    inserts.append(
        f", ins_text AS (INSERT INTO search_text (resource_type, resource_id, narrative, content)"
        f" SELECT $1, $2, to_tsvector('simple', ${narrative}::text), to_tsvector('simple', ${content}::text)"
        f" FROM cur WHERE $5::bytea IS NOT NULL"
        f" ON CONFLICT (resource_type, resource_id) DO UPDATE"
        f" SET narrative = EXCLUDED.narrative, content = EXCLUDED.content)"
    )
    deletes.append(
        ", del_text AS (DELETE FROM search_text WHERE resource_type = $1 AND resource_id = $2"
        " AND $5::bytea IS NULL AND EXISTS (SELECT 1 FROM cur))"
    )
    return "".join(inserts), "".join(deletes), content + 1


INSERT_INDEX, DELETE_INDEX, PREVIOUS_ARG = _index_ctes()

_FOLLOW_UP = (
    """
, hist AS (
    INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, content)
    SELECT $1, $2, $3, $4, $6, $5 FROM cur
), ob AS (
    INSERT INTO outbox (resource_type, id, version_id, method) SELECT $1, $2, $3, $6 FROM cur
)"""
    + INSERT_INDEX
    + "\nSELECT count(*) FROM cur"
)

INSERT_RESOURCE = (
    """
WITH cur AS (
    INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content)
    VALUES ($1, $2, $3, $4, $5::bytea IS NULL, $5::bytea)
    ON CONFLICT (resource_type, id) DO NOTHING
    RETURNING 1
)"""
    + _FOLLOW_UP
)

UPDATE_RESOURCE = (
    f"""
WITH cur AS (
    UPDATE resource
    SET version_id = $3, last_updated = $4, deleted = $5::bytea IS NULL, content = $5::bytea
    WHERE resource_type = $1 AND id = $2 AND version_id = ${PREVIOUS_ARG}
    RETURNING 1
)"""
    + DELETE_INDEX
    + _FOLLOW_UP
)

READ_CURRENT = """
SELECT version_id, last_updated, content FROM resource WHERE resource_type = $1 AND id = $2
"""

READ_CURRENT_FOR_UPDATE = READ_CURRENT + " FOR UPDATE"

READ_VERSION = """
SELECT version_id, last_updated, content, method FROM resource_history
WHERE resource_type = $1 AND id = $2 AND version_id = $3
"""

HISTORY_COLUMNS = "resource_type, id, version_id, last_updated, content, method, seq"
