-- Patient isolation (docs/security.md) hides a Binary whose securityContext, or a
-- stored Bundle whose content, names another patient. Both are decided by index rows
-- that rows written before this release lack, so their index is rebuilt: a reindex job
-- that the first node to start picks up as an abandoned one (updated long ago). The
-- node fills in its own public base (params.base) before running it, as $reindex does.
INSERT INTO job (id, kind, status, params, updated_at)
VALUES ('upgrade-0016-binary-bundle', 'reindex', 'running',
        '{"types": ["Binary", "Bundle"], "base": null, "upgrade": true}', 'epoch')
ON CONFLICT (id) DO NOTHING;
