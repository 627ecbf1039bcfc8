-- Consent (issue 11, docs/security.md "Consent"): the provisions of every active
-- patient-privacy Consent, flattened at write time like the search index tables (same
-- statement, same transaction, rewritten on update, gone on delete), so the read
-- predicate (search/consent.py) sees a Consent change in the very next statement.
-- One row per provision with a type: its depth (root 0), deny or permit, and the
-- conditions it and its ancestors set, as a JSON array of {"k": kind, ...} groups.
CREATE TABLE search_consent (
    resource_type text    NOT NULL,   -- always Consent: the owner columns of every index table
    resource_id   text    NOT NULL,
    patient_id    text    NOT NULL,
    node          integer NOT NULL,   -- the provision's place in document order (root 0)
    depth         integer NOT NULL,
    decision      text    NOT NULL CHECK (decision IN ('deny', 'permit')),
    conditions    jsonb   NOT NULL
);
CREATE INDEX search_consent_patient ON search_consent (patient_id, decision);
CREATE INDEX search_consent_owner ON search_consent (resource_type, resource_id);

-- Purpose of use (v3-ActReason codes, space-separated) asked for on the authorization
-- request, carried into the access tokens of the code and of its refresh tokens.
ALTER TABLE auth_code ADD COLUMN purpose_of_use text;
ALTER TABLE auth_refresh_token ADD COLUMN purpose_of_use text;

-- The read predicate's work (search/consent.py), as functions so every query that joins
-- it stays small to plan; they are called only while some deny provision is stored.

-- The references a provision actor may name to mean a user: its fhirUser, the
-- PractitionerRoles it is or whose practitioner it is, their Organizations, and the
-- CareTeams it or one of those roles participates in.
CREATE FUNCTION consent_actors(fhir_user text) RETURNS text[] LANGUAGE sql STABLE AS $$
    WITH u AS (SELECT split_part(fhir_user, '/', 1) AS t, split_part(fhir_user, '/', 2) AS id),
    roles AS (
        SELECT x.resource_id AS id FROM search_reference x, u
        WHERE x.resource_type = 'PractitionerRole' AND x.param = 'practitioner'
          AND x.target_type = u.t AND x.target_id = u.id
        UNION SELECT u.id FROM u WHERE u.t = 'PractitionerRole'
    )
    SELECT coalesce(array_agg(DISTINCT a), '{}') FROM (
        SELECT fhir_user AS a WHERE fhir_user IS NOT NULL
        UNION ALL SELECT 'PractitionerRole/' || id FROM roles
        UNION ALL SELECT 'Organization/' || o.target_id FROM search_reference o
            WHERE o.resource_type = 'PractitionerRole' AND o.param = 'organization'
              AND o.target_type = 'Organization' AND o.resource_id IN (SELECT id FROM roles)
        UNION ALL SELECT 'CareTeam/' || c.resource_id FROM search_reference c, u
            WHERE c.resource_type = 'CareTeam' AND c.param = 'participant'
              AND ((c.target_type = u.t AND c.target_id = u.id)
                   OR (c.target_type = 'PractitionerRole' AND c.target_id IN (SELECT id FROM roles)))
    ) s
$$;

-- Whether every condition group of a provision matches the resource rtype/rid for a
-- viewer (actors, purposes); care: `Type param` of each type's care-date parameter.
CREATE FUNCTION consent_applies(conditions jsonb, rtype text, rid text, care text[], actors text[], purposes text[])
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT NOT EXISTS (
        SELECT 1 FROM jsonb_array_elements(conditions) AS g(c)
        WHERE NOT coalesce(CASE g.c->>'k'
            WHEN 'actor' THEN g.c->'v' ?| actors
            WHEN 'purpose' THEN g.c->'v' ?| purposes
            WHEN 'class' THEN g.c->'v' ? rtype
            WHEN 'data' THEN g.c->'v' ? (rtype || '/' || rid)
            WHEN 'period' THEN coalesce((g.c->>'lo')::timestamptz <= now(), true)
                           AND coalesce((g.c->>'hi')::timestamptz >= now(), true)
            WHEN 'code' THEN EXISTS (
                SELECT 1 FROM search_token t WHERE t.resource_type = rtype AND t.resource_id = rid
                  AND t.param = 'code' AND g.c->'v' ?| ARRAY[coalesce(t.system, '') || '|' || t.code, '*|' || t.code])
            WHEN 'security' THEN EXISTS (
                SELECT 1 FROM search_token t WHERE t.resource_type = rtype AND t.resource_id = rid
                  AND t.param = '_security' AND g.c->'v' ?| ARRAY[coalesce(t.system, '') || '|' || t.code, '*|' || t.code])
            WHEN 'dataPeriod' THEN EXISTS (
                SELECT 1 FROM search_date d WHERE d.resource_type = rtype AND d.resource_id = rid
                  AND (d.resource_type || ' ' || d.param) = ANY(care)
                  AND d.high >= coalesce((g.c->>'lo')::timestamptz, '-infinity')
                  AND d.low <= coalesce((g.c->>'hi')::timestamptz, 'infinity'))
            ELSE false END, false))
$$;

-- Whether an active Consent of a patient whose compartment holds rtype/rid (through the
-- `Type param` reference parameters in pairs, or being that Patient) denies it to the
-- viewer: a deny provision applies and no deeper permit provision of the same Consent
-- does. own: the patient the viewer is (their own Consents never hold them back).
CREATE FUNCTION consent_denies(
    rtype text, rid text, pairs text[], care text[], actors text[], purposes text[], own text
) RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- plpgsql: its plan is kept for the session (a SQL function would be planned per call)
    RETURN EXISTS (
        SELECT 1 FROM search_consent d
        WHERE d.decision = 'deny' AND d.patient_id IS DISTINCT FROM own
          AND (d.patient_id = rid AND rtype = 'Patient'
               OR d.patient_id IN (
                   SELECT x.target_id FROM search_reference x
                   WHERE x.resource_type = rtype AND x.resource_id = rid AND x.target_type = 'Patient'
                     AND (x.resource_type || ' ' || x.param) = ANY(pairs)))
          AND consent_applies(d.conditions, rtype, rid, care, actors, purposes)
          AND NOT EXISTS (
              SELECT 1 FROM search_consent k
              WHERE k.resource_type = 'Consent' AND k.resource_id = d.resource_id AND k.decision = 'permit'
                AND k.depth > d.depth AND consent_applies(k.conditions, rtype, rid, care, actors, purposes)));
END $$;
