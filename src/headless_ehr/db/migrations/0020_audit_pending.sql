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
-- scheme `ehr audit verify` checks. The loop keeps only small arrays (row addresses,
-- seqs, links): the events' content is read in place, never copied into arrays. An event
-- already in the chain (its id) is not chained again, so one queued twice is chained
-- once, and its copies leave the queue. Returns how many rows it chained.
CREATE FUNCTION audit_chain(max_rows integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
    last_hash bytea;
    ids uuid[] := '{}';
    rows tid[] := '{}';
    twins tid[] := '{}';
    seqs bigint[] := '{}';
    prevs bytea[] := '{}';
    hashes bytea[] := '{}';
    n integer := 0;
    r record;
BEGIN
    PERFORM pg_advisory_xact_lock(1589682385);  -- one chainer at a time, on every node
    SELECT e.seq, e.hash INTO last_seq, last_hash FROM audit_event e ORDER BY e.seq DESC LIMIT 1;
    IF last_seq IS NULL THEN
        last_seq := 0;
        last_hash := decode(repeat('00', 32), 'hex');
    END IF;
    FOR r IN
        SELECT p.ctid AS row, p.id, p.content FROM audit_pending p
        WHERE NOT EXISTS (SELECT 1 FROM audit_event e WHERE e.id = p.id)
        ORDER BY p.recorded, p.id LIMIT max_rows
    LOOP
        IF n > 0 AND r.id = ids[n] THEN  -- the same event queued twice: chained once
            twins := twins || r.row;
            CONTINUE;
        END IF;
        n := n + 1;
        ids[n] := r.id;
        rows[n] := r.row;
        seqs[n] := last_seq + n;
        prevs[n] := last_hash;
        last_hash := sha256(last_hash || int8send(last_seq + n) || r.content);
        hashes[n] := last_hash;
    END LOOP;
    INSERT INTO audit_event (seq, id, recorded, content, prev_hash, hash, patients, agents, entities,
        subtype, outcome, action, address)
    SELECT u.seq, p.id, p.recorded, p.content, u.prev, u.hash, p.patients, p.agents, p.entities, p.subtype,
        p.outcome, p.action, p.address
    FROM unnest(rows, seqs, prevs, hashes) AS u(row, seq, prev, hash) JOIN audit_pending p ON p.ctid = u.row;
    DELETE FROM audit_pending WHERE ctid = ANY(rows || twins);
    DELETE FROM audit_pending p USING audit_event e WHERE e.id = p.id;  -- copies of events chained before
    RETURN n + cardinality(twins);
END $$;

-- write_watermark (migration 0009) without the audit recorder's own transactions
-- (application_name headless-ehr-audit, db/pool.py): they write audit rows only, never a
-- resource, history or outbox row, and a chaining in flight must not hold history back.
CREATE OR REPLACE FUNCTION write_watermark() RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ts timestamptz := clock_timestamp();
    oldest timestamptz;
BEGIN
    PERFORM pg_stat_clear_snapshot();  -- a transaction caches pg_stat_activity: read it afresh
    SELECT min(a.xact_start) INTO oldest
    FROM pg_stat_activity a
    WHERE a.datname = current_database() AND a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid()
        AND a.backend_type <> 'autovacuum worker'  -- an autoanalyze holds an id but writes no rows
        AND a.application_name IS DISTINCT FROM 'headless-ehr-audit';
    RETURN least(now_ts, oldest);
END $$;
