-- The audit trail (audit/): one row per R4 AuditEvent, appended in batches under an
-- advisory lock so the hash chain never forks. hash = SHA-256(prev_hash || seq as
-- 8 bytes big-endian || content); content is the AuditEvent JSON exactly as hashed.
-- `ehr audit verify` walks the chain. The columns after hash are the search index of
-- `GET /fhir/AuditEvent` (rest/audit_search.py), derived from content (verify checks them).
-- The triggers refuse UPDATE, DELETE and TRUNCATE
-- so a change needs a deliberate act (a superuser disabling them), which verify then shows.
CREATE TABLE audit_event (
    seq        bigint      PRIMARY KEY,
    id         uuid        NOT NULL UNIQUE,
    recorded   timestamptz NOT NULL,
    content    bytea       NOT NULL,
    prev_hash  bytea       NOT NULL,
    hash       bytea       NOT NULL,
    patients   text[]      NOT NULL,  -- Patient/id: agent.who and entity.what naming patients
    agents     text[]      NOT NULL,  -- agent.who: Type/id, and system|value and value of identifiers
    entities   text[]      NOT NULL,  -- entity.what: Type/id (and Type/id/_history/v when versioned)
    subtype    text        NOT NULL,  -- the restful-interaction code
    outcome    text        NOT NULL,
    action     text        NOT NULL,
    address    text                   -- the requestor's agent.network.address
);
CREATE INDEX audit_event_recorded ON audit_event (recorded);
CREATE INDEX audit_event_patients ON audit_event USING gin (patients);
CREATE INDEX audit_event_agents ON audit_event USING gin (agents);
CREATE INDEX audit_event_entities ON audit_event USING gin (entities);

CREATE FUNCTION audit_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_event is append-only';
END $$;
CREATE TRIGGER audit_event_no_change BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_event_append_only();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only();
