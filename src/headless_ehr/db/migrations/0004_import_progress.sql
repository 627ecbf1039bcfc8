-- `ehr import` progress per source file, so an interrupted import resumes where it
-- stopped: `position` counts the units (Bundles or NDJSON lines) already committed.
CREATE TABLE import_progress (
    source      text        PRIMARY KEY,   -- absolute path, size and mtime
    position    bigint      NOT NULL DEFAULT 0,
    done        boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
