-- One index for reference searches in both directions. Every reference filter knows
-- the target id (a forward search `subject=Patient/1`, a chain's or _has's inner ids,
-- a _revinclude's targets, a compartment), so leading with target_id serves them all;
-- it covers the owner, so the resource ids come from the index alone and, for fixed
-- target, parameter and type, in id order for keyset paging. It replaces the forward
-- (resource_type, param, target_id, ...) and reverse (target_type, target_id, ...)
-- indexes: every Synthea resource holds several references, and writing one index
-- entry per reference instead of two cut PostgreSQL's CPU per imported resource by a
-- tenth (bench/RESULTS.md).
CREATE INDEX search_reference_target
    ON search_reference (target_id, target_type, param, resource_type, resource_id);
DROP INDEX search_reference_match;
DROP INDEX search_reference_reverse;

-- Content is stored as sent and is often above the 2 kB TOAST threshold (Synthea
-- Claims, ExplanationOfBenefits, DiagnosticReports); lz4 compresses it at a fraction
-- of pglz's CPU. Servers built without lz4 keep the default.
DO $$
BEGIN
    ALTER TABLE resource ALTER COLUMN content SET COMPRESSION lz4;
    ALTER TABLE resource_history ALTER COLUMN content SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    NULL;
END $$;
