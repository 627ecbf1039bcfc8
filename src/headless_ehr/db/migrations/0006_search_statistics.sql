-- Search plans. The columns of an index row are strongly correlated (a code belongs
-- to one system and one parameter), and without extended statistics PostgreSQL
-- underestimates how many rows a code or a reference target has, so prepared
-- (generic) plans start from the wrong side: from a common code instead of the patient.
CREATE STATISTICS IF NOT EXISTS search_token_stats (dependencies, mcv)
    ON resource_type, param, system, code FROM search_token;
CREATE STATISTICS IF NOT EXISTS search_reference_stats (dependencies, mcv)
    ON resource_type, param, target_type, target_id FROM search_reference;

-- Covering indexes: the ids of the resources with a value come from the index alone
-- (an index-only scan), so a filter never visits rows it does not return.
CREATE INDEX search_token_match ON search_token (resource_type, param, code, system, resource_id);
DROP INDEX search_token_value;
CREATE INDEX search_reference_match
    ON search_reference (resource_type, param, target_id, target_type, resource_id);
DROP INDEX search_reference_target;

-- Dates: one index led by each end of the range, each covering the other end and the
-- owner, for range filters (ge/le/...) and for _sort in either direction.
CREATE INDEX search_date_low ON search_date (resource_type, param, low, high, resource_id);
CREATE INDEX search_date_high ON search_date (resource_type, param, high, low, resource_id);
DROP INDEX search_date_range;

ANALYZE search_token, search_reference, search_date;
