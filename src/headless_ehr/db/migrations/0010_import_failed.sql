-- `ehr import`: the entries of a file that failed, so that running the import again
-- retries exactly those instead of calling the file "already imported".
-- `item` is the 1-based line number in an NDJSON file, or the 0-based entry index in
-- a Bundle (0 for a file holding one resource). Rows are written and removed in the
-- same transaction as the unit they belong to.
CREATE TABLE import_failed (
    source  text   NOT NULL,   -- the import_progress key
    item    bigint NOT NULL,
    PRIMARY KEY (source, item)
);

-- import_progress.position now counts the lines of an NDJSON file already committed
-- (it counted batches of --batch-size non-empty lines, which broke a resume with
-- another batch size). An import interrupted before this migration is converted
-- assuming the default batch size, 500.
UPDATE import_progress SET position = position * 500
WHERE NOT done AND position > 0 AND source ~ '\.ndjson(\.gz)?\|';
COMMENT ON COLUMN import_progress.position IS
    'NDJSON: lines committed; Bundle or single resource: 1 once its unit committed';
