-- Webhook delivery (Standard Webhooks), made by analytics from a PostgreSQL outbox.
--
-- Signing secrets are sealed at rest: SecretBox (AES-256-GCM under SECRETS_KEY) bound to (tenant_id,
-- 'webhook-<id>'), so only control-api (which writes them) and analytics (which signs with them) can open them.
-- The readable column `secret` of 0002 becomes NULL once analytics has sealed a row at start-up (see
-- voice_analytics.webhooks.seal_readable_secrets: a secret that is not `whsec_` + base64 of 24-64 bytes is
-- re-derived as `whsec_` + base64 of its UTF-8 bytes, the same HMAC key a receiver already holds).

ALTER TABLE webhooks ALTER COLUMN secret DROP NOT NULL;
ALTER TABLE webhooks ADD COLUMN IF NOT EXISTS secret_sealed bytea;
ALTER TABLE webhooks ADD COLUMN IF NOT EXISTS disabled_reason text;   -- e.g. the receiver answered 410 Gone
ALTER TABLE webhooks DROP CONSTRAINT IF EXISTS webhooks_has_secret;
ALTER TABLE webhooks ADD CONSTRAINT webhooks_has_secret CHECK (secret IS NOT NULL OR secret_sealed IS NOT NULL);

-- One message per (endpoint, event): written idempotently by event id by analytics' webhook consumer, claimed
-- by the delivery worker (FOR UPDATE SKIP LOCKED and a lease, so replicas never send the same attempt twice).
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              text PRIMARY KEY,              -- the webhook-id header: the same on every retry
    tenant_id       text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    webhook_id      text NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id        text NOT NULL,
    event_type      text NOT NULL,
    call_id         text,
    body            text NOT NULL,                 -- the exact JSON signed and sent
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    step            integer NOT NULL DEFAULT 0,    -- attempts made in this round (redeliver starts a new round)
    attempts        integer NOT NULL DEFAULT 0,    -- attempts made in all
    next_attempt_at timestamptz,                   -- pending: when the next attempt is due (or the claim lease ends)
    last_status     integer,                       -- HTTP status of the last attempt (NULL: no response)
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint ON webhook_deliveries (tenant_id, webhook_id, created_at DESC);

-- Every attempt: when, what came back (status and, for a failure, a short reason; never the response body).
CREATE TABLE IF NOT EXISTS webhook_attempts (
    id              bigserial PRIMARY KEY,
    delivery_id     text NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    tenant_id       text NOT NULL,
    at              timestamptz NOT NULL,
    status          integer,
    error           text,
    duration_ms     double precision NOT NULL DEFAULT 0,
    retry_after_s   double precision                -- what the receiver asked for (429/5xx with Retry-After)
);
CREATE INDEX IF NOT EXISTS webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
