-- SearchParameter resources stored on the server that extend the R4 set. A row
-- appears when a $reindex picks the parameter up; indexed_at is set once every
-- resource of its base types has index rows for it, and only then is it searchable.
CREATE TABLE custom_search_param (
    url         text        PRIMARY KEY,
    resource_id text        NOT NULL,
    version_id  integer     NOT NULL,
    definition  jsonb       NOT NULL,
    indexed_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
