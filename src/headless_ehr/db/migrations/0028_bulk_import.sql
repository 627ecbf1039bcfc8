-- Bulk Data $import jobs (docs/bulk.md, "Import ($import)"; bulk/import_jobs.py).
-- A job is a list of inputs (one NDJSON source each). Inputs, not jobs, are claimed
-- (FOR UPDATE SKIP LOCKED plus a lease renewed by the node loading it), so the inputs of
-- one job load on several nodes (or `ehr serve --workers` processes) at once, as the
-- files of `ehr import` do. Every unit of lines commits with the input's `position`,
-- fenced on the claim's lease token: a node that died leaves its lease to run out and
-- another node continues after the last committed line, loading nothing twice.
CREATE TABLE bulk_import_job (
    id               uuid        PRIMARY KEY,
    owner            text        NOT NULL,            -- the kick-off's client, user and patient context
    caller           jsonb       NOT NULL,            -- the kick-off's Principal (bulk/caller.py)
    request          text        NOT NULL,            -- the kick-off URL (manifest `request`)
    params           jsonb       NOT NULL,            -- inputFormat, inputSource, storageDetail
    transaction_time timestamptz NOT NULL DEFAULT now(),
    status           text        NOT NULL,            -- accepted | running | completed | failed | cancelled
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    expires_at       timestamptz,                     -- job removed then (EHR_BULK_RETENTION_HOURS)
    polled_at        timestamptz                      -- last status request answered (429 when too soon)
);
CREATE INDEX bulk_import_job_expiry ON bulk_import_job (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE bulk_import_input (
    job_id        uuid        NOT NULL REFERENCES bulk_import_job (id) ON DELETE CASCADE,
    seq           integer     NOT NULL,               -- order in the kick-off's Parameters
    resource_type text        NOT NULL,
    url           text        NOT NULL,
    status        text        NOT NULL DEFAULT 'pending',  -- pending | done | failed
    position      bigint      NOT NULL DEFAULT 0,     -- lines committed (each line loaded or in error)
    loaded        bigint      NOT NULL DEFAULT 0,     -- resources created or updated
    failed        bigint      NOT NULL DEFAULT 0,     -- lines in error
    error         text,                               -- why the input as a whole could not be read
    lease_token   uuid,
    lease_until   timestamptz,
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX bulk_import_input_pending ON bulk_import_input (job_id, seq) WHERE status = 'pending';

-- Per-line errors (the manifest's error NDJSON), committed with the unit of lines they
-- belong to; at most EHR_BULK_IMPORT_MAX_ERRORS per job are kept (`failed` counts all).
CREATE TABLE bulk_import_error (
    job_id  uuid    NOT NULL REFERENCES bulk_import_job (id) ON DELETE CASCADE,
    seq     integer NOT NULL,
    line    bigint  NOT NULL,
    message text    NOT NULL,
    PRIMARY KEY (job_id, seq, line)
);
