-- SMART on FHIR authorisation (docs/security.md): keys, clients, users, and the
-- short-lived state of the OAuth flows. Everything a node needs to verify a token or
-- finish a flow lives here, so any node answers any request. Secrets are stored as
-- hashes (SHA-256 of random tokens, Argon2id of passwords), never as sent.

-- Token signing keys (ES256). The newest unretired key signs; every key whose tokens
-- may still be alive is published at /jwks and verifies.
CREATE TABLE auth_signing_key (
    kid          text        PRIMARY KEY,
    private_jwk  jsonb       NOT NULL,
    public_jwk   jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz            -- no longer signs; published until its tokens expire
);

CREATE TABLE auth_client (
    client_id     text        PRIMARY KEY,
    name          text        NOT NULL,
    secret_hash   text,                  -- confidential-symmetric clients
    public        boolean     NOT NULL DEFAULT false,
    redirect_uris text[]      NOT NULL DEFAULT '{}',
    scopes        text[]      NOT NULL DEFAULT '{}',   -- the most it may be granted
    jwks          jsonb,                 -- confidential-asymmetric: registered keys…
    jwks_uri      text,                  -- …or where to fetch them
    admin         boolean     NOT NULL DEFAULT false,  -- may use /admin
    policies      text[]      NOT NULL DEFAULT '{}',   -- access policies (issue 11)
    enabled       boolean     NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE auth_user (
    username      text        PRIMARY KEY,
    password_hash text        NOT NULL,  -- Argon2id
    fhir_user     text,                  -- Patient/123, Practitioner/7, RelatedPerson/5…
    roles         text[]      NOT NULL DEFAULT '{}',
    patients      text[]      NOT NULL DEFAULT '{}',   -- patient ids offered by the picker
    policies      text[]      NOT NULL DEFAULT '{}',
    enabled       boolean     NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- EHR launch contexts minted by POST /admin/launch.
CREATE TABLE auth_launch (
    launch_id   text        PRIMARY KEY,
    patient     text,
    encounter   text,
    created_by  text        NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- Authorization codes: single use (used_at set on redemption), short-lived.
CREATE TABLE auth_code (
    code_hash       text        PRIMARY KEY,
    client_id       text        NOT NULL REFERENCES auth_client ON DELETE CASCADE,
    username        text        NOT NULL,
    redirect_uri    text        NOT NULL,
    scope           text        NOT NULL,
    code_challenge  text        NOT NULL,
    nonce           text,
    patient         text,
    encounter       text,
    aud             text        NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    family          uuid                    -- the refresh family it started, to revoke on reuse
);

-- Refresh tokens: rotated on every use; presenting a used one revokes its family.
CREATE TABLE auth_refresh_token (
    token_hash  text        PRIMARY KEY,
    family      uuid        NOT NULL,
    client_id   text        NOT NULL REFERENCES auth_client ON DELETE CASCADE,
    username    text,
    fhir_user   text,
    scope       text        NOT NULL,
    patient     text,
    encounter   text,
    aud         text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,             -- NULL: offline_access, until revoked
    used_at     timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX auth_refresh_token_family ON auth_refresh_token (family);

-- Revoked access tokens (by jti) until they would have expired anyway; every node
-- polls this table so a revocation holds everywhere within a second.
CREATE TABLE auth_revoked_token (
    jti         text        PRIMARY KEY,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX auth_revoked_token_revoked_at ON auth_revoked_token (revoked_at);

-- Client assertion ids seen (SMART Backend Services): a replayed jti is refused.
CREATE TABLE auth_assertion_jti (
    client_id   text        NOT NULL,
    jti         text        NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);
