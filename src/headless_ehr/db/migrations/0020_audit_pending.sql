-- Write-side audit events (audit/pending.py): each resource write inserts its AuditEvent
-- here in its own statement, so the event commits or rolls back with the change. No
-- index: a write pays one heap insert. The audit recorder of any node moves the rows
-- into the hash chain (audit_event, migration 0017) in the chain's own transaction,
-- under its lock, so a crash leaves them here rather than losing or doubling them.
CREATE TABLE audit_pending (
    id        uuid        NOT NULL,
    recorded  timestamptz NOT NULL,
    content   bytea       NOT NULL,
    patients  text[]      NOT NULL,
    agents    text[]      NOT NULL,
    entities  text[]      NOT NULL,
    subtype   text        NOT NULL,
    outcome   text        NOT NULL,
    action    text        NOT NULL,
    address   text
);

