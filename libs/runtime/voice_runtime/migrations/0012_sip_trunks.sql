-- SIP trunks per tenant (issue 15), mirrored to JetStream KV `trunks` (t.<id>) by control-api, and the tenant's
-- outbound-call allow-list (against toll fraud: POST /v1/calls may only dial numbers on it; empty: none).
-- A trunk's configuration is the voice_schemas.agent.SipTrunk JSON without id/tenant_id (validated by control-api);
-- its passwords are names of tenant secrets, never values.
CREATE TABLE IF NOT EXISTS sip_trunks (
    id              text PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name            text NOT NULL,
    config          jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    version         integer NOT NULL DEFAULT 1,
    UNIQUE (tenant_id, name)
);
CREATE INDEX IF NOT EXISTS sip_trunks_tenant ON sip_trunks (tenant_id, created_at, id);

-- Each row is one pattern: an exact E.164 number or an E.164 prefix ending in '*' (normalised by control-api).
CREATE TABLE IF NOT EXISTS outbound_allow_list (
    tenant_id       text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    pattern         text NOT NULL CHECK (pattern ~ '^\+[1-9][0-9]{0,14}\*?$'),
    position        integer NOT NULL,
    PRIMARY KEY (tenant_id, pattern)
);
