"""The store's SQL, one statement per write so a write is one round trip.

Data-modifying CTEs share one snapshot: the history row, the outbox row and the
search index rows are written only when the `cur` step changed the resource row,
all atomically.
"""

from __future__ import annotations

# $1 type, $2 id, $3 version, $4 last_updated, $5 content, $6 method,
# $7/$8/$9 token params/systems/codes, [$10 expected previous version].
_FOLLOW_UP = """
, hist AS (
    INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, content)
    SELECT $1, $2, $3, $4, $6, $5 FROM cur
), ob AS (
    INSERT INTO outbox (resource_type, id, version_id, method) SELECT $1, $2, $3, $6 FROM cur
), tok AS (
    INSERT INTO search_token (resource_type, resource_id, param, system, code)
    SELECT $1, $2, t.p, t.s, t.c
    FROM cur, unnest($7::text[], $8::text[], $9::text[]) AS t(p, s, c)
)
SELECT count(*) FROM cur
"""

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
    """
WITH cur AS (
    UPDATE resource
    SET version_id = $3, last_updated = $4, deleted = $5::bytea IS NULL, content = $5::bytea
    WHERE resource_type = $1 AND id = $2 AND version_id = $10
    RETURNING 1
), del AS (
    DELETE FROM search_token
    WHERE resource_type = $1 AND resource_id = $2 AND EXISTS (SELECT 1 FROM cur)
)"""
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
