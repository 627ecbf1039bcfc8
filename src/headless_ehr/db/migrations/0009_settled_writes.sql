-- Reading changes in commit order (docs/storage.md "History, _since and the outbox").
--
-- Every write stamps its rows with the database clock, taken after the writing
-- transaction has its id (store/sql.py STAMP), so a version's last_updated is never
-- earlier than the start of the transaction that writes it. A transaction still in
-- progress can therefore only add rows at or after its own start. The watermark is
-- the start of the oldest transaction of this database that holds a transaction id
-- (i.e. may be writing), or the current time when there is none: a version that
-- becomes visible later has last_updated >= the watermark read now. Readers show
-- only rows below it, so a reader that continues after the last row it saw (by
-- time, by (time, seq), or with _since) never skips a late commit.
--
-- The clock is read before pg_stat_activity, and a caller reads its rows in a later
-- statement (a newer snapshot): a writer missing from pg_stat_activity has either
-- committed (its rows are in the caller's snapshot) or takes its id, and its
-- timestamp, after the watermark. Assumes the server's writes all run as roles
-- whose sessions this role may see in pg_stat_activity (the same role, or one with
-- pg_read_all_stats), no prepared (two-phase) transactions, and a clock that does
-- not step backwards.
CREATE FUNCTION write_watermark() RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ts timestamptz := clock_timestamp();
    oldest timestamptz;
BEGIN
    PERFORM pg_stat_clear_snapshot();  -- a transaction caches pg_stat_activity: read it afresh
    SELECT min(a.xact_start) INTO oldest
    FROM pg_stat_activity a
    WHERE a.datname = current_database() AND a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid()
        AND a.backend_type <> 'autovacuum worker';  -- an autoanalyze holds an id but writes no rows
    RETURN least(now_ts, oldest);
END $$;

-- The outbox in commit-safe order: rows are read by (created_at, seq), never by seq
-- alone (seq is handed out when a row is inserted, not when it commits). That order
-- is its key, so a write still maintains one outbox index, not two.
ALTER TABLE outbox DROP CONSTRAINT outbox_pkey, ADD PRIMARY KEY (created_at, seq);

-- The outbox rows a relay may deliver next: those after (after_at, after_seq), the
-- position of the last row it delivered, and below the watermark; oldest first.
-- Start with ('-infinity', 0). Call it in a READ COMMITTED transaction (the default):
-- its query must see a snapshot taken after the watermark.
CREATE FUNCTION outbox_settled(after_at timestamptz, after_seq bigint, max_rows integer)
RETURNS SETOF outbox
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    settled timestamptz := write_watermark();
BEGIN
    RETURN QUERY
        SELECT o.* FROM outbox o
        WHERE (o.created_at, o.seq) > (after_at, after_seq) AND o.created_at < settled
        ORDER BY o.created_at, o.seq
        LIMIT max_rows;
END $$;
