-- Events (docs/events.md): the outbox's readers, Subscriptions' delivery state.

-- Every event's stable id: the webhook-id of its deliveries and the Nats-Msg-Id of its
-- broker message, the same on every retry and after any crash. The outbox's seq is its
-- per-deployment sequence number.
ALTER TABLE outbox ADD COLUMN event_id uuid NOT NULL DEFAULT gen_random_uuid();

-- Each reader of the outbox keeps its place in commit order (events/outbox.py): the
-- subscription relay ('subscriptions') and the broker publisher ('nats'). A reader's
-- turn is claimed by locking its row FOR UPDATE SKIP LOCKED: one node at a time reads a
-- reader's next events, so each event is handled once and per-subscription order holds.
CREATE TABLE event_cursor (
    name       text        PRIMARY KEY,
    after_at   timestamptz NOT NULL,
    after_seq  bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A write is noticed within milliseconds: one notification per statement that added
-- outbox rows (a bulk insert of 500 resources sends one), delivered at commit only.
CREATE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ehr_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- What the server does with a Subscription, beside the resource (which holds what the
-- client asked). Written by events/ only, keyed by the Subscription's id.
CREATE TABLE subscription_state (
    id                 text        PRIMARY KEY,
    owner              jsonb       NOT NULL,            -- whose rights match and filter its events (events/owner.py)
    status             text        NOT NULL,            -- requested | active | error | off
    -- what it is notified of: [{"type": T, "interactions": [create|update|delete] or null (all),
    -- "params": [[name, value], ...]}]; one entry for R4 criteria, one per trigger for a topic
    triggers           jsonb       NOT NULL,
    topic              text,                            -- backport: the SubscriptionTopic's canonical URL
    channel            text        NOT NULL,            -- rest-hook | websocket
    endpoint           text,
    payload            text        NOT NULL,            -- empty | id-only | full-resource
    r4_style           boolean     NOT NULL,            -- R4 criteria subscription (not a backport topic one)
    headers            jsonb       NOT NULL DEFAULT '[]',
    secret             text,                            -- whsec_…: Standard Webhooks signing key
    heartbeat_seconds  integer,
    end_at             timestamptz,
    events_since_start bigint      NOT NULL DEFAULT 0,  -- eventNumber of its latest notification
    delivered_through  bigint      NOT NULL DEFAULT 0,  -- rest-hook: the last eventNumber delivered
    attempts           integer     NOT NULL DEFAULT 0,  -- failed attempts of the next notification
    failing_since      timestamptz,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    lease_until        timestamptz,                     -- a node is delivering it until then
    last_sent_at       timestamptz,
    error              text,
    created_at         timestamptz NOT NULL DEFAULT now()
);

-- Each event a subscription matched, numbered per subscription (backport eventNumber).
CREATE TABLE subscription_notification (
    subscription_id text        NOT NULL,
    event_number    bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_seq       bigint      NOT NULL,
    resource_type   text        NOT NULL,
    resource_id     text        NOT NULL,
    version_id      integer     NOT NULL,
    interaction     text        NOT NULL,               -- create | update | patch | delete
    occurred_at     timestamptz NOT NULL,               -- the change's commit timestamp
    PRIMARY KEY (subscription_id, event_number)
);
CREATE INDEX subscription_notification_time ON subscription_notification (occurred_at);

-- Every delivery attempt (admin API): handshakes and heartbeats have no event number.
CREATE TABLE subscription_delivery (
    subscription_id text        NOT NULL,
    event_number    bigint,
    kind            text        NOT NULL,               -- event-notification | handshake | heartbeat
    attempt         integer     NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    http_status     integer,                            -- NULL: no answer (refused, timed out)
    latency_ms      double precision,
    error           text
);
CREATE INDEX subscription_delivery_at ON subscription_delivery (subscription_id, at);
CREATE INDEX subscription_delivery_time ON subscription_delivery (at);

-- write_watermark (migrations 0009, 0020) without the audit recorder's and the event
-- workers' own transactions (application_name headless-ehr-audit, headless-ehr-events,
-- db/pool.py): they never write a resource, history or outbox row, and a relay or a
-- delivery in flight must not hold history back.
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
        AND a.application_name IS DISTINCT FROM 'headless-ehr-audit'
        AND a.application_name IS DISTINCT FROM 'headless-ehr-events';
    RETURN least(now_ts, oldest);
END $$;
