-- WebSocket binding tokens already used (events/binding_tokens.py): each binds one socket
-- once, on whichever node it is sent to. A row is kept until the token could not be used
-- anyway (its expiry), then removed by the next use of any token.
CREATE TABLE ws_binding_token_use (
    jti        text        PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX ws_binding_token_use_expiry ON ws_binding_token_use (expires_at);
