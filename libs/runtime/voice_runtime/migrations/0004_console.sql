-- Web console: server-side sessions (the cookie holds a random token; only its SHA-256 is stored) and the
-- platform-admin scope for console users (the first-run admin has it, as BOOTSTRAP_ADMIN_KEY does). Owned by
-- control-api.

ALTER TABLE users ADD COLUMN IF NOT EXISTS platform_admin boolean NOT NULL DEFAULT false;

-- A session acts as exactly one user or one API key; every request re-reads that user or key, so a deactivated
-- user, a revoked key or a sign-out ends the session at once, on every replica.
CREATE TABLE IF NOT EXISTS console_sessions (
    id              text PRIMARY KEY,              -- sha256 of the cookie's token
    tenant_id       text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id         text REFERENCES users(id) ON DELETE CASCADE,
    api_key_id      text REFERENCES api_keys(id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    CHECK ((user_id IS NULL) <> (api_key_id IS NULL))
);
CREATE INDEX IF NOT EXISTS console_sessions_expires ON console_sessions (expires_at);
CREATE INDEX IF NOT EXISTS console_sessions_user ON console_sessions (user_id) WHERE user_id IS NOT NULL;
