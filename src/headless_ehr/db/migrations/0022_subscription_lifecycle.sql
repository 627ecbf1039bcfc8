-- Subscriptions' lifecycle and the relay's matching (docs/events.md, events/).

-- A subscription is matched against the events after the write that started it (its
-- creation, or a change from off back to requested): (since_at, since_seq) is that
-- write's outbox position, so an event committed before it never reaches it, however
-- late the relay handles the event.
ALTER TABLE subscription_state
    ADD COLUMN since_at   timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN since_seq  bigint      NOT NULL DEFAULT 0,
    ADD COLUMN filters    jsonb       NOT NULL DEFAULT '[]',  -- backport: [[type, [[name, value], ...]], ...]
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

-- Moves on every change of a Subscription's state by its write hook: each node's relay
-- reloads its subscriptions when it sees a new value (one row: a Subscription write
-- waits for another's commit, which is rare and cheap).
CREATE TABLE subscription_generation (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    generation bigint  NOT NULL
);
INSERT INTO subscription_generation VALUES (true, 0);

-- Backport SubscriptionTopics (Basic resources, events/topics.py) by canonical URL: what
-- a topic-based Subscription is resolved against when it is written.
CREATE TABLE subscription_topic (
    url           text PRIMARY KEY,
    id            text NOT NULL UNIQUE,          -- the Basic's id
    triggers      jsonb NOT NULL,                -- [{"type", "interactions", "params"}]
    can_filter_by jsonb NOT NULL                 -- [{"type": T or null, "param": name, "modifiers": [...]}]
);
