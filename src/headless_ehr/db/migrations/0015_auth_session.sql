-- Browser sessions of the authorisation server's pages (auth/authorize.py): the user
-- signed in at /oauth/authorize, by the SHA-256 of the session cookie. Any node can
-- continue the flow; signing out or disabling the user ends them.
CREATE TABLE auth_session (
    session_hash  text        PRIMARY KEY,
    username      text        NOT NULL REFERENCES auth_user ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX auth_session_expires_at ON auth_session (expires_at);
