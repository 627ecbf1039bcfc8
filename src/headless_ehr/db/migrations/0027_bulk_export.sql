-- Bulk Data $export jobs (docs/bulk.md, "Export ($export)"; bulk/export_jobs.py).
-- A job is claimed by one node at a time (FOR UPDATE SKIP LOCKED plus a lease that its
-- worker renews at every committed page); a node that dies leaves its lease to run out
-- and another node resumes the job from its last committed page (`progress`).
CREATE TABLE bulk_export_job (
    id               uuid        PRIMARY KEY,
    owner            text        NOT NULL,            -- the kick-off's client, user and patient context
    caller           jsonb       NOT NULL,            -- the kick-off's Principal (bulk/caller.py)
    request          text        NOT NULL,            -- the kick-off URL (manifest `request`)
    local_base       text,                            -- the FHIR base the kick-off came in on
    params           jsonb       NOT NULL,            -- level, types, _since, _typeFilter, _elements, patients
    transaction_time timestamptz NOT NULL,            -- the snapshot: every version below it, nothing after
    status           text        NOT NULL,            -- accepted | running | completed | failed | cancelled
    progress         jsonb       NOT NULL DEFAULT '{}',  -- where the export stands (bulk/export_worker.py)
    error            text,
    lease_token      uuid,                            -- the current claim; progress commits check it
    lease_until      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    expires_at       timestamptz,                     -- files and job removed then (EHR_BULK_RETENTION_HOURS)
    polled_at        timestamptz                      -- last status request answered (429 when too soon)
);
CREATE INDEX bulk_export_job_open ON bulk_export_job (created_at) WHERE status IN ('accepted', 'running');
CREATE INDEX bulk_export_job_expiry ON bulk_export_job (expires_at) WHERE expires_at IS NOT NULL;

-- The complete files of a job, in order (the manifest's output and deleted): inserted
-- with the progress commit that records them, so progress stays small however many
-- files an export has.
CREATE TABLE bulk_export_file (
    job_id        uuid    NOT NULL REFERENCES bulk_export_job (id) ON DELETE CASCADE,
    seq           integer NOT NULL,                  -- order in the manifest
    kind          text    NOT NULL,                  -- output | deleted
    resource_type text    NOT NULL,
    name          text    NOT NULL,
    count         bigint  NOT NULL,
    bytes         bigint  NOT NULL,
    PRIMARY KEY (job_id, seq)
);
