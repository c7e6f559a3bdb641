-- Control plane: tenants, users, API keys, versioned agents, phone numbers, webhooks, audit log.
-- Owned by control-api. Ids are subject-safe ([A-Za-z0-9_-]{1,64}) because they travel in KV keys.

CREATE TABLE IF NOT EXISTS tenants (
    id              text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    name            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    version         integer NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS users (
    id              text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    tenant_id       text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    email           text NOT NULL,
    name            text,
    role            text NOT NULL CHECK (role IN ('admin', 'supervisor')),
    password_hash   text NOT NULL,
    is_active       boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    version         integer NOT NULL DEFAULT 1
);
-- login is by email alone, so an email is unique across the platform
CREATE UNIQUE INDEX IF NOT EXISTS users_email ON users (lower(email));
CREATE INDEX IF NOT EXISTS users_tenant ON users (tenant_id, created_at, id);

CREATE TABLE IF NOT EXISTS api_keys (
    id              text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    tenant_id       text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name            text NOT NULL,
    prefix          text NOT NULL UNIQUE,          -- visible, used to find the row
    key_hash        text NOT NULL,                 -- sha256 of the whole key (keys are 256-bit random)
    role            text NOT NULL CHECK (role IN ('admin', 'supervisor')),
    user_id         text REFERENCES users(id) ON DELETE SET NULL,  -- a supervisor key acts as this user
    platform_admin  boolean NOT NULL DEFAULT false,
    source          text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'tenant', 'bootstrap')),
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    last_used_at    timestamptz,
    revoked_at      timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant_id, created_at, id);

CREATE TABLE IF NOT EXISTS refresh_tokens (
    id              text PRIMARY KEY,
    user_id         text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    tenant_id       text NOT NULL,
    token_hash      text NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz
);
CREATE INDEX IF NOT EXISTS refresh_tokens_user ON refresh_tokens (user_id);

-- An agent is a head row plus immutable versions; deleting an agent keeps its versions (calls refer to them).
CREATE TABLE IF NOT EXISTS agents (
    id              text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    tenant_id       text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    owner_user_id   text REFERENCES users(id) ON DELETE SET NULL,
    current_version integer NOT NULL,
    name            text NOT NULL,
    is_active       boolean NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
CREATE INDEX IF NOT EXISTS agents_tenant ON agents (tenant_id, created_at, id) WHERE deleted_at IS NULL;

CREATE TABLE IF NOT EXISTS agent_versions (
    agent_id        text NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    version         integer NOT NULL CHECK (version >= 1),
    tenant_id       text NOT NULL,
    config          jsonb NOT NULL,                -- the API fields of this version (AgentConfig minus ids)
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text,
    PRIMARY KEY (agent_id, version)
);

CREATE OR REPLACE FUNCTION agent_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'agent versions are immutable';
END
$$;
DROP TRIGGER IF EXISTS agent_versions_no_update ON agent_versions;
CREATE TRIGGER agent_versions_no_update BEFORE UPDATE ON agent_versions
    FOR EACH ROW EXECUTE FUNCTION agent_versions_immutable();

CREATE TABLE IF NOT EXISTS phone_numbers (
    id              text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    tenant_id       text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    number          text NOT NULL UNIQUE CHECK (number ~ '^\+[1-9][0-9]{5,14}$'),
    agent_id        text NOT NULL REFERENCES agents(id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    version         integer NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS phone_numbers_tenant ON phone_numbers (tenant_id, created_at, id);
CREATE INDEX IF NOT EXISTS phone_numbers_agent ON phone_numbers (agent_id);

CREATE TABLE IF NOT EXISTS webhooks (
    id              text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    tenant_id       text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    url             text NOT NULL,
    events          text[] NOT NULL,
    secret          text NOT NULL,                 -- kept readable: deliveries are signed with it
    description     text,
    is_active       boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    version         integer NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS webhooks_tenant ON webhooks (tenant_id, created_at, id);

-- Who changed what, when: written in the same transaction as the change.
CREATE TABLE IF NOT EXISTS audit_log (
    id              bigserial PRIMARY KEY,
    tenant_id       text NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    actor_type      text NOT NULL,                 -- api_key | user | system
    actor_id        text,
    action          text NOT NULL,                 -- e.g. agent.update
    resource_type   text NOT NULL,
    resource_id     text,
    request_id      text,
    details         jsonb NOT NULL DEFAULT '{}'::jsonb   -- field names and versions, never values
);
CREATE INDEX IF NOT EXISTS audit_log_tenant ON audit_log (tenant_id, id DESC);

-- Secrets the platform generates for itself (e.g. the JWT signing key when JWT_SECRET is unset).
CREATE TABLE IF NOT EXISTS platform_secrets (
    name            text PRIMARY KEY,
    value           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS calls_tenant_status ON calls (tenant_id, status, started_at DESC);
