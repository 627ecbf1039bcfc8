-- Access policies (issue 11, docs/security.md "Access policies"): named JSON documents,
-- each PUT a new version; users and clients name theirs in auth_user/auth_client.policies.
-- Every node caches them and polls auth_policy_generation, which any change bumps.

CREATE TABLE auth_policy (
    name        text        NOT NULL,
    version     integer     NOT NULL,
    document    jsonb       NOT NULL,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE auth_policy_generation (
    only_row    boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    generation  bigint      NOT NULL
);
INSERT INTO auth_policy_generation VALUES (true, 1);

CREATE FUNCTION auth_policy_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE auth_policy_generation SET generation = generation + 1;
    RETURN NULL;
END $$;

CREATE TRIGGER auth_policy_changed AFTER INSERT OR UPDATE OR DELETE ON auth_policy
    FOR EACH STATEMENT EXECUTE FUNCTION auth_policy_bump();
CREATE TRIGGER auth_client_policies_changed AFTER UPDATE OF policies OR DELETE ON auth_client
    FOR EACH STATEMENT EXECUTE FUNCTION auth_policy_bump();
CREATE TRIGGER auth_user_policies_changed AFTER UPDATE OF policies OR DELETE ON auth_user
    FOR EACH STATEMENT EXECUTE FUNCTION auth_policy_bump();
