-- An absolute reference is local only under this server's base (docs/search.md, "Local
-- and foreign references"). Rows written before that rule held the target type and id
-- of every absolute URL that ended in Type/id, so another server's Patient/123 joined
-- our Patient/123's compartment, patient searches and includes; canonical rows
-- (questionnaire, profiles) held them too. The base is not known here, so every such
-- row keeps only its URL: nothing foreign stays local. A $reindex gives the rows of
-- references under this server's base their type and id back (transactions and
-- imports store those as relative references, so they are rare).
UPDATE search_reference SET target_type = NULL, target_id = NULL
WHERE url IS NOT NULL AND target_id IS NOT NULL AND url ~ '^[A-Za-z][A-Za-z0-9+.-]*:';
