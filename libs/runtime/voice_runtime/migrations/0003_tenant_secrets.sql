-- Tenant secrets (e.g. the API key of an agent's own LLM endpoint). Owned by control-api.
-- Only ciphertext is stored: SecretBox (AES-256-GCM under SECRETS_KEY) bound to (tenant_id, name), so a row
-- copied to another tenant or name does not open. The plaintext is never stored, returned or logged.

CREATE TABLE IF NOT EXISTS tenant_secrets (
    tenant_id       text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (name ~ '^[A-Za-z0-9_-]{1,64}$'),
    sealed          bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);
