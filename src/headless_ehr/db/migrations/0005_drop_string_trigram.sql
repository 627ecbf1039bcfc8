-- The trigram index served only :contains but cost every write dearly (each string
-- adds one GIN entry per trigram). :contains now scans the parameter's entries in
-- search_string_value instead, which is fast enough for an occasional modifier.
DROP INDEX IF EXISTS search_string_trgm;
