-- Calls and their turns: written by analytics from durable bus events, read by control-api.
CREATE TABLE IF NOT EXISTS calls (
    id              text PRIMARY KEY,
    tenant_id       text NOT NULL,
    agent_id        text NOT NULL,
    agent_version   integer NOT NULL,
    channel         text NOT NULL,
    from_number     text,
    to_number       text,
    status          text NOT NULL DEFAULT 'ringing',  -- ringing | in_progress | ended
    started_at      timestamptz NOT NULL,
    answered_at     timestamptz,
    ended_at        timestamptz,
    end_reason      text,
    duration_s      double precision
);
CREATE INDEX IF NOT EXISTS calls_tenant_started ON calls (tenant_id, started_at DESC);
CREATE INDEX IF NOT EXISTS calls_tenant_agent ON calls (tenant_id, agent_id);

CREATE TABLE IF NOT EXISTS call_turns (
    id              bigserial PRIMARY KEY,
    call_id         text NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    tenant_id       text NOT NULL,
    turn_id         text NOT NULL,
    speaker         text NOT NULL CHECK (speaker IN ('caller', 'agent')),
    text            text NOT NULL,
    started_at      timestamptz,
    ended_at        timestamptz,
    interrupted     boolean NOT NULL DEFAULT false,
    latency_ms      jsonb,
    UNIQUE (call_id, turn_id, speaker)
);
CREATE INDEX IF NOT EXISTS call_turns_call ON call_turns (call_id, id);

-- Idempotent sinks: an event id is processed once even when JetStream redelivers it.
CREATE TABLE IF NOT EXISTS processed_events (
    event_id        text NOT NULL,
    consumer        text NOT NULL,
    processed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
