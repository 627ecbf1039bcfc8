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
