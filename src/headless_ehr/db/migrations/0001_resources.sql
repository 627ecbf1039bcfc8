-- Current version of every resource: one row per (type, id), content is the exact
-- JSON bytes we return, so a read is one primary-key lookup and no re-serialisation.
CREATE TABLE resource (
    resource_type text        NOT NULL,
    id            text        NOT NULL,
    version_id    integer     NOT NULL,
    last_updated  timestamptz NOT NULL,
    deleted       boolean     NOT NULL DEFAULT false,
    content       bytea,                      -- NULL once deleted
    PRIMARY KEY (resource_type, id)
);

-- Every version ever written, deletions included (content NULL, method DELETE).
-- seq breaks ties between equal timestamps so history paging is a stable keyset.
CREATE TABLE resource_history (
    seq           bigserial   PRIMARY KEY,
    resource_type text        NOT NULL,
    id            text        NOT NULL,
    version_id    integer     NOT NULL,
    last_updated  timestamptz NOT NULL,
    method        text        NOT NULL,       -- POST | PUT | PATCH | DELETE
    content       bytea,
    UNIQUE (resource_type, id, version_id)
);
CREATE INDEX resource_history_type_time ON resource_history (resource_type, last_updated, seq);
CREATE INDEX resource_history_time ON resource_history (last_updated, seq);

-- Transactional outbox: written in the same transaction as every change, the single
-- source of truth for events (subscriptions, webhooks, the broker stream).
CREATE TABLE outbox (
    seq           bigserial   PRIMARY KEY,
    resource_type text        NOT NULL,
    id            text        NOT NULL,
    version_id    integer     NOT NULL,
    method        text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Search index, token type (identifier, code, status, ...): one row per value,
-- extracted at write time in the same transaction.
CREATE TABLE search_token (
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    param         text NOT NULL,
    system        text,
    code          text
);
CREATE INDEX search_token_value ON search_token (resource_type, param, code, system);
CREATE INDEX search_token_owner ON search_token (resource_type, resource_id);
