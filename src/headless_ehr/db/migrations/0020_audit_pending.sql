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


-- Move up to max_rows pending events into the hash chain, oldest first, in the caller's
-- transaction (audit/chain.py `chain_pending`): under the chain's advisory lock, each
-- record's hash = SHA-256(previous hash || seq as 8 bytes big-endian || content), the
-- scheme `ehr audit verify` checks. An event already in the chain (its id) is skipped,
-- so a pending row written twice is chained once. Returns how many rows it took.
CREATE FUNCTION audit_chain(max_rows integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
    last_hash bytea;
    taken audit_pending[];
    seqs bigint[];
    prevs bytea[];
    hashes bytea[];
    n integer := 0;
    r audit_pending;
BEGIN
    PERFORM pg_advisory_xact_lock(1589682385);  -- one chainer at a time, on every node
    WITH gone AS (
        DELETE FROM audit_pending WHERE ctid = ANY(ARRAY(SELECT ctid FROM audit_pending LIMIT max_rows))
        RETURNING *
    )
    SELECT array_agg(g ORDER BY g.recorded, g.id) INTO taken
    FROM (SELECT DISTINCT ON (gone.id) gone.* FROM gone ORDER BY gone.id) g  -- a row queued twice: once
    WHERE NOT EXISTS (SELECT 1 FROM audit_event e WHERE e.id = g.id);  -- or already chained
    IF taken IS NULL THEN
        RETURN 0;
    END IF;
    SELECT e.seq, e.hash INTO last_seq, last_hash FROM audit_event e ORDER BY e.seq DESC LIMIT 1;
    IF last_seq IS NULL THEN
        last_seq := 0;
        last_hash := decode(repeat('00', 32), 'hex');
    END IF;
    FOREACH r IN ARRAY taken LOOP  -- the links, in order; then one insert for them all
        n := n + 1;
        seqs[n] := last_seq + n;
        prevs[n] := last_hash;
        last_hash := sha256(last_hash || int8send(last_seq + n) || r.content);
        hashes[n] := last_hash;
    END LOOP;
    INSERT INTO audit_event (seq, id, recorded, content, prev_hash, hash, patients, agents, entities,
        subtype, outcome, action, address)
    SELECT u.s, t.id, t.recorded, t.content, u.p, u.h, t.patients, t.agents, t.entities, t.subtype, t.outcome,
        t.action, t.address
    FROM unnest(taken) WITH ORDINALITY
        AS t(id, recorded, content, patients, agents, entities, subtype, outcome, action, address, i)
    JOIN unnest(seqs, prevs, hashes) WITH ORDINALITY AS u(s, p, h, i) USING (i);
    RETURN n;
END $$;
