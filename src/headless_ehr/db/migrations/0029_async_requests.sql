-- Asynchronous requests (`Prefer: respond-async`: transactions, batches, searches,
-- $everything; rest/asynchronous.py, bulk/async_jobs.py). A request is recorded with its
-- caller and run later by whichever node claims it (FOR UPDATE SKIP LOCKED plus a fenced
-- lease, as bulk_export_job). Its result is written in the same database transaction as
-- its effects and the row's completion, so a request is applied exactly once: a node that
-- dies before that commit leaves nothing behind, and the request runs again from the start.
CREATE TABLE async_request (
    id               uuid        PRIMARY KEY,
    owner            text        NOT NULL,            -- the client, user and patient context (bulk/caller.py)
    caller           jsonb       NOT NULL,            -- the Principal it runs as (bulk/caller.py)
    method           text        NOT NULL,            -- the HTTP request as received, to be replayed
    path             text        NOT NULL,            -- below the FHIR base
    query            text        NOT NULL,
    headers          jsonb       NOT NULL,            -- [[name, value], ...] without credentials
    body             bytea       NOT NULL,
    origin           text        NOT NULL,            -- scheme://host[/prefix] it came in on (its base URLs)
    client_address   text,
    status           text        NOT NULL,            -- accepted | running | completed | failed | cancelled
    attempts         integer     NOT NULL DEFAULT 0,  -- claims so far (a request that kills its node stops)
    response_status  integer,                         -- the synchronous answer's status and headers
    response_headers jsonb,
    result_bytes     bigint,
    lease_token      uuid,
    lease_until      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    expires_at       timestamptz,                     -- removed then (EHR_BULK_RETENTION_HOURS)
    polled_at        timestamptz                      -- last status request answered (429 when too soon)
);
CREATE INDEX async_request_open ON async_request (created_at) WHERE status IN ('accepted', 'running');
CREATE INDEX async_request_expiry ON async_request (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX async_request_owner ON async_request (owner) WHERE status IN ('accepted', 'running');

-- The answer's body in chunks, so the status request streams it chunk by chunk.
CREATE TABLE async_result_chunk (
    request_id uuid    NOT NULL REFERENCES async_request (id) ON DELETE CASCADE,
    seq        integer NOT NULL,
    data       bytea   NOT NULL,
    PRIMARY KEY (request_id, seq)
);
