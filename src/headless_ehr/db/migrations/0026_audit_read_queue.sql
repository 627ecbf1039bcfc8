-- A read of a Patient by id queues a narrow row instead of its whole AuditEvent (audit/
-- pending.py, store/sql.py READ_CURRENT_AUDITED): the event id, its time, the Patient's id
-- and the caller's template, about 90 bytes against 1.3 KB. Every read of one caller
-- (its agents, address, purpose of use) shares one template row, written once (audit/
-- pending.py `register`). audit_chain composes each event's content from the two as it chains it
-- (the chain, audit_event and `ehr audit verify` are unchanged), so an event is stored
-- whole once, in the chain. Both tables are queues like audit_pending: what is in them is
-- not yet chained, and a crash of an API node after its response loses nothing.

-- The shared part of one caller's read events: the AuditEvent's JSON up to the event's own
-- parts (head), the rest with @ID@, @T@ and @RID@ for the event id, its time and the
-- Patient's id (tail, audit/event.py READ_EVENT_TAIL), and the search columns of the
-- caller. digest (SHA-256 of all of it) finds the row of a caller again. Append-only: a
-- queued read names its template by id.
CREATE TABLE audit_read_template (
    id       integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    digest   bytea   NOT NULL UNIQUE,
    head     bytea   NOT NULL,
    tail     text    NOT NULL,
    agents   text[]  NOT NULL,
    address  text
);
CREATE TRIGGER audit_read_template_no_change BEFORE UPDATE OR DELETE ON audit_read_template
    FOR EACH ROW EXECUTE FUNCTION audit_event_append_only();
CREATE TRIGGER audit_read_template_no_truncate BEFORE TRUNCATE ON audit_read_template
    FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only();

-- One queued read: no index and no foreign key (a read pays one narrow heap insert); the
-- read's statement inserts it only when its template exists.
CREATE TABLE audit_read_pending (
    id        uuid        NOT NULL,
    recorded  timestamptz NOT NULL,
    template  integer     NOT NULL,
    patient   text        NOT NULL  -- the Patient's id (a checked resource id: no JSON escaping needed)
);

-- The event a queued read stands for, exactly as audit/event.py `audit_event` writes it
-- (tests/audit holds the two to one event): recorded in UTC, milliseconds.
CREATE FUNCTION audit_read_content(head bytea, tail text, id uuid, recorded timestamptz, patient text)
RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT head || convert_to(replace(replace(replace(tail,
        '@ID@', id::text),
        '@T@', to_char(recorded AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')),
        '@RID@', patient), 'UTF8')
$$;

-- Everything queued and not yet chained, as audit_event's columns (tests, operators).
CREATE VIEW audit_queued AS
SELECT p.id, p.recorded, p.content, p.patients, p.agents, p.entities, p.subtype, p.outcome, p.action, p.address
FROM audit_pending p
UNION ALL
SELECT r.id, r.recorded, audit_read_content(t.head, t.tail, r.id, r.recorded, r.patient),
    ARRAY['Patient/' || r.patient], t.agents, ARRAY['Patient/' || r.patient], 'read', '0', 'R', t.address
FROM audit_read_pending r JOIN audit_read_template t ON t.id = r.template;

-- The queues are written and emptied all the time: vacuum them often (a scan of a queue
-- also reads its dead rows until then). The recorder vacuums them too (audit/recorder.py).
ALTER TABLE audit_pending SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 5000);
ALTER TABLE audit_read_pending SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 5000);

-- audit_chain (migration 0020) over both queues, oldest first: the same links and hashes
-- (SHA-256(previous hash || seq as 8 bytes big-endian || content)), the same lock. A queued
-- read's content is composed from its template once, hashed, and inserted from the loop's
-- arrays; its id is the database's own random UUID, so only audit_pending's events can
-- have been queued twice.
CREATE OR REPLACE FUNCTION audit_chain(max_rows integer) RETURNS integer LANGUAGE plpgsql
-- Every join here looks events up by id or row address: a queue that was once long (its
-- size estimate stale) must never turn one into a hash join reading the whole chain.
SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
    last_seq bigint;
    last_hash bytea;
    n integer := 0;  -- events chained
    np integer := 0;  -- of them from audit_pending
    nr integer := 0;  -- from audit_read_pending
    ids uuid[] := '{}';
    rows tid[] := '{}';  -- audit_pending rows chained
    seqs bigint[] := '{}';
    prevs bytea[] := '{}';
    hashes bytea[] := '{}';
    twins tid[] := '{}';
    reads tid[] := '{}';  -- audit_read_pending rows chained, and their events' parts
    read_ids uuid[] := '{}';
    read_times timestamptz[] := '{}';
    read_templates integer[] := '{}';
    read_patients text[] := '{}';
    read_contents bytea[] := '{}';
    read_seqs bigint[] := '{}';
    read_prevs bytea[] := '{}';
    read_hashes bytea[] := '{}';
    r record;
BEGIN
    PERFORM pg_advisory_xact_lock(1589682385);  -- one chainer at a time, on every node
    SELECT e.seq, e.hash INTO last_seq, last_hash FROM audit_event e ORDER BY e.seq DESC LIMIT 1;
    IF last_seq IS NULL THEN
        last_seq := 0;
        last_hash := decode(repeat('00', 32), 'hex');
    END IF;
    FOR r IN
        SELECT q.* FROM (
            SELECT p.ctid AS row, false AS is_read, p.id, p.recorded, p.content, 0 AS template, '' AS patient
            FROM audit_pending p
            WHERE NOT EXISTS (SELECT 1 FROM audit_event e WHERE e.id = p.id)
            UNION ALL
            SELECT q.ctid, true, q.id, q.recorded, audit_read_content(t.head, t.tail, q.id, q.recorded, q.patient),
                q.template, q.patient
            FROM audit_read_pending q JOIN audit_read_template t ON t.id = q.template
        ) q
        ORDER BY q.recorded, q.id LIMIT max_rows
    LOOP
        IF r.is_read THEN
            n := n + 1;
            nr := nr + 1;
            reads[nr] := r.row;
            read_ids[nr] := r.id;
            read_times[nr] := r.recorded;
            read_templates[nr] := r.template;
            read_patients[nr] := r.patient;
            read_contents[nr] := r.content;
            read_seqs[nr] := last_seq + n;
            read_prevs[nr] := last_hash;
            last_hash := sha256(last_hash || int8send(last_seq + n) || r.content);
            read_hashes[nr] := last_hash;
            CONTINUE;
        END IF;
        IF np > 0 AND r.id = ids[np] THEN  -- the same event queued twice: chained once
            twins := twins || r.row;
            CONTINUE;
        END IF;
        n := n + 1;
        np := np + 1;
        ids[np] := r.id;
        rows[np] := r.row;
        seqs[np] := last_seq + n;
        prevs[np] := last_hash;
        last_hash := sha256(last_hash || int8send(last_seq + n) || r.content);
        hashes[np] := last_hash;
    END LOOP;
    IF np > 0 THEN
        INSERT INTO audit_event (seq, id, recorded, content, prev_hash, hash, patients, agents, entities,
            subtype, outcome, action, address)
        SELECT u.seq, p.id, p.recorded, p.content, u.prev, u.hash, p.patients, p.agents, p.entities, p.subtype,
            p.outcome, p.action, p.address
        FROM unnest(rows, seqs, prevs, hashes) AS u(row, seq, prev, hash) JOIN audit_pending p ON p.ctid = u.row;
    END IF;
    IF nr > 0 THEN
        INSERT INTO audit_event (seq, id, recorded, content, prev_hash, hash, patients, agents, entities,
            subtype, outcome, action, address)
        SELECT u.seq, u.id, u.recorded, u.content, u.prev, u.hash, ARRAY['Patient/' || u.patient], t.agents,
            ARRAY['Patient/' || u.patient], 'read', '0', 'R', t.address
        FROM unnest(read_ids, read_times, read_contents, read_templates, read_patients, read_seqs, read_prevs,
            read_hashes) AS u(id, recorded, content, template, patient, seq, prev, hash)
        JOIN audit_read_template t ON t.id = u.template;
        DELETE FROM audit_read_pending WHERE ctid = ANY(reads);
    END IF;
    IF np > 0 OR cardinality(twins) > 0 THEN
        DELETE FROM audit_pending WHERE ctid = ANY(rows || twins);
    END IF;
    DELETE FROM audit_pending p USING audit_event e WHERE e.id = p.id;  -- copies of events chained before
    RETURN n + cardinality(twins);
END $$;
