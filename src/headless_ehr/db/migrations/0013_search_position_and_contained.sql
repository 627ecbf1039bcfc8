-- Location.position for the special parameter `near` (R4 Location-near): one row per
-- position, in WGS84 degrees. A search takes the rows inside the bounding box of its
-- circle from the (resource_type, param, latitude, longitude) index, then keeps those
-- whose great-circle (haversine) distance is within the radius.
CREATE TABLE search_position (
    resource_type text             NOT NULL,
    resource_id   text             NOT NULL,
    param         text             NOT NULL,
    latitude      double precision NOT NULL,
    longitude     double precision NOT NULL
);
CREATE INDEX search_position_box ON search_position (resource_type, param, latitude, longitude, resource_id);
CREATE INDEX search_position_owner ON search_position (resource_type, resource_id);

-- Locations stored before this migration: their positions, as extraction would write them.
INSERT INTO search_position (resource_type, resource_id, param, latitude, longitude)
SELECT v.resource_type, v.id, 'near', v.lat, v.lon
FROM (
    SELECT s.resource_type, s.id,
           CASE WHEN jsonb_typeof(s.p->'latitude') = 'number' THEN (s.p->>'latitude')::float8 END AS lat,
           CASE WHEN jsonb_typeof(s.p->'longitude') = 'number' THEN (s.p->>'longitude')::float8 END AS lon
    FROM (
        SELECT r.resource_type, r.id, convert_from(r.content, 'UTF8')::jsonb -> 'position' AS p
        FROM resource r
        WHERE r.resource_type = 'Location' AND NOT r.deleted AND r.content IS NOT NULL
    ) s
    WHERE jsonb_typeof(s.p) = 'object'
) v
WHERE v.lat BETWEEN -90 AND 90 AND v.lon BETWEEN -180 AND 180;

-- Contained resources (R4 search.html#contained), for `_contained=true|both`: the
-- index rows of each contained resource, owned by its container (written and removed
-- with it), in one wide table so that ordinary searches never see them. `kind` says
-- which typed table a row stands in for; the views below give each kind the column
-- names of that table, with the contained resource as owner: resource_type is its type
-- and resource_id the key `ContainerType/containerId#containedId`. A `resource` row
-- stands for the contained resource itself.
CREATE TABLE search_contained (
    resource_type  text NOT NULL,  -- the container
    resource_id    text NOT NULL,
    contained_type text NOT NULL,
    contained_id   text NOT NULL,
    kind           text NOT NULL,
    param          text,
    system         text,
    code           text,
    text           text,
    value_text     text,
    exact          text,
    target_type    text,
    target_id      text,
    target_version text,
    url            text,
    low_ts         timestamptz,
    high_ts        timestamptz,
    value_num      numeric,
    low_num        numeric,
    high_num       numeric,
    unit           text,
    canon_value    numeric,
    canon_code     text,
    uri            text,
    components     jsonb,
    latitude       double precision,
    longitude      double precision
);
CREATE INDEX search_contained_match ON search_contained (contained_type, kind, param, code);
CREATE INDEX search_contained_owner ON search_contained (resource_type, resource_id);

CREATE VIEW search_contained_resource AS
    SELECT contained_type AS resource_type, resource_type || '/' || resource_id || '#' || contained_id AS id,
           resource_type AS container_type, resource_id AS container_id
    FROM search_contained WHERE kind = 'resource';
CREATE VIEW search_contained_token AS
    SELECT contained_type AS resource_type, resource_type || '/' || resource_id || '#' || contained_id AS resource_id,
           param, system, code, text
    FROM search_contained WHERE kind = 'token';
CREATE VIEW search_contained_string AS
    SELECT contained_type AS resource_type, resource_type || '/' || resource_id || '#' || contained_id AS resource_id,
           param, value_text AS value, exact
    FROM search_contained WHERE kind = 'string';
CREATE VIEW search_contained_reference AS
    SELECT contained_type AS resource_type, resource_type || '/' || resource_id || '#' || contained_id AS resource_id,
           param, target_type, target_id, target_version, url
    FROM search_contained WHERE kind = 'reference';
CREATE VIEW search_contained_date AS
    SELECT contained_type AS resource_type, resource_type || '/' || resource_id || '#' || contained_id AS resource_id,
           param, low_ts AS low, high_ts AS high
    FROM search_contained WHERE kind = 'date';
CREATE VIEW search_contained_number AS
    SELECT contained_type AS resource_type, resource_type || '/' || resource_id || '#' || contained_id AS resource_id,
           param, value_num AS value, low_num AS low, high_num AS high
    FROM search_contained WHERE kind = 'number';
CREATE VIEW search_contained_quantity AS
    SELECT contained_type AS resource_type, resource_type || '/' || resource_id || '#' || contained_id AS resource_id,
           param, value_num AS value, low_num AS low, high_num AS high, system, code, unit, canon_value, canon_code
    FROM search_contained WHERE kind = 'quantity';
CREATE VIEW search_contained_uri AS
    SELECT contained_type AS resource_type, resource_type || '/' || resource_id || '#' || contained_id AS resource_id,
           param, uri
    FROM search_contained WHERE kind = 'uri';
CREATE VIEW search_contained_composite AS
    SELECT contained_type AS resource_type, resource_type || '/' || resource_id || '#' || contained_id AS resource_id,
           param, components
    FROM search_contained WHERE kind = 'composite';
CREATE VIEW search_contained_position AS
    SELECT contained_type AS resource_type, resource_type || '/' || resource_id || '#' || contained_id AS resource_id,
           param, latitude, longitude
    FROM search_contained WHERE kind = 'position';
