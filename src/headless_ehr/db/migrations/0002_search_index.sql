-- Typed search index tables, one per SearchParameter type (HAPI's design): each row
-- is one value of one parameter of one current resource version, written in the same
-- statement as the resource. Every table has an owner index for delete-and-rewrite.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- token: system|code; text is the normalised display/text for :text.
ALTER TABLE search_token ADD COLUMN text text;

-- string: value is lower-cased and accent-stripped (for the default "starts with"
-- and :contains), exact keeps the original (for :exact).
CREATE TABLE search_string (
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    param         text NOT NULL,
    value         text NOT NULL,
    exact         text NOT NULL
);
CREATE INDEX search_string_value ON search_string (resource_type, param, value text_pattern_ops);
CREATE INDEX search_string_trgm ON search_string USING gin (value gin_trgm_ops);
CREATE INDEX search_string_owner ON search_string (resource_type, resource_id);

-- reference: relative references as target_type/target_id (+ version); absolute,
-- canonical and logical references keep their text in url.
CREATE TABLE search_reference (
    resource_type  text NOT NULL,
    resource_id    text NOT NULL,
    param          text NOT NULL,
    target_type    text,
    target_id      text,
    target_version text,
    url            text
);
CREATE INDEX search_reference_target ON search_reference (resource_type, param, target_id, target_type);
CREATE INDEX search_reference_reverse ON search_reference (target_type, target_id, param, resource_type);
CREATE INDEX search_reference_url ON search_reference (resource_type, param, url) WHERE url IS NOT NULL;
CREATE INDEX search_reference_owner ON search_reference (resource_type, resource_id);

-- date, dateTime, instant, Period, Timing: the closed range [low, high] they cover,
-- widened by their precision (2024-03 covers the whole of March).
CREATE TABLE search_date (
    resource_type text        NOT NULL,
    resource_id   text        NOT NULL,
    param         text        NOT NULL,
    low           timestamptz NOT NULL,
    high          timestamptz NOT NULL
);
CREATE INDEX search_date_range ON search_date (resource_type, param, low, high);
CREATE INDEX search_date_owner ON search_date (resource_type, resource_id);

-- number: the value and the range its significant figures imply.
CREATE TABLE search_number (
    resource_type text    NOT NULL,
    resource_id   text    NOT NULL,
    param         text    NOT NULL,
    value         numeric NOT NULL,
    low           numeric NOT NULL,
    high          numeric NOT NULL
);
CREATE INDEX search_number_value ON search_number (resource_type, param, value);
CREATE INDEX search_number_owner ON search_number (resource_type, resource_id);

-- quantity: as number, plus system/code/unit and the UCUM canonical form.
CREATE TABLE search_quantity (
    resource_type text    NOT NULL,
    resource_id   text    NOT NULL,
    param         text    NOT NULL,
    value         numeric NOT NULL,
    low           numeric NOT NULL,
    high          numeric NOT NULL,
    system        text,
    code          text,
    unit          text,
    canon_value   numeric,
    canon_code    text
);
CREATE INDEX search_quantity_value ON search_quantity (resource_type, param, code, value);
CREATE INDEX search_quantity_canon ON search_quantity (resource_type, param, canon_code, canon_value);
CREATE INDEX search_quantity_owner ON search_quantity (resource_type, resource_id);

-- uri (and canonical-typed uri parameters such as url).
CREATE TABLE search_uri (
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    param         text NOT NULL,
    uri           text NOT NULL
);
CREATE INDEX search_uri_value ON search_uri (resource_type, param, uri text_pattern_ops);
CREATE INDEX search_uri_owner ON search_uri (resource_type, resource_id);

-- composite: one row per element that carries all components, the components as a
-- JSON array in parameter order ({system, code} / {low, high, system, code} / ...).
CREATE TABLE search_composite (
    resource_type text  NOT NULL,
    resource_id   text  NOT NULL,
    param         text  NOT NULL,
    components    jsonb NOT NULL
);
CREATE INDEX search_composite_param ON search_composite (resource_type, param);
CREATE INDEX search_composite_owner ON search_composite (resource_type, resource_id);

-- _text (narrative) and _content (every string in the resource), PostgreSQL full text.
CREATE TABLE search_text (
    resource_type text     NOT NULL,
    resource_id   text     NOT NULL,
    narrative     tsvector,
    content       tsvector,
    PRIMARY KEY (resource_type, resource_id)
);
CREATE INDEX search_text_narrative ON search_text USING gin (narrative);
CREATE INDEX search_text_content ON search_text USING gin (content);

-- Search parameters defined at run time (SearchParameter resources), and the
-- background jobs that re-extract index rows for them ($reindex).
CREATE TABLE job (
    id          text        PRIMARY KEY,
    kind        text        NOT NULL,
    status      text        NOT NULL,          -- queued | running | completed | failed
    params      jsonb       NOT NULL DEFAULT '{}',
    progress    jsonb       NOT NULL DEFAULT '{}',
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
