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
