-- Live sentiment per caller utterance (analytics): VADER compound score, label, and the call's rolling value
-- after it (an exponential moving average, voice_analytics.sentiment). One row per transcript event.
CREATE TABLE IF NOT EXISTS call_sentiment (
    id              bigserial PRIMARY KEY,
    call_id         text NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    tenant_id       text NOT NULL,
    event_id        text NOT NULL UNIQUE,          -- the transcript.final event scored
    turn_id         text,
    utterance_id    text,
    speaker         text NOT NULL CHECK (speaker IN ('caller', 'agent')),
    compound        double precision NOT NULL,
    label           text NOT NULL CHECK (label IN ('positive', 'neutral', 'negative')),
    rolling         double precision NOT NULL,
    alert           boolean NOT NULL DEFAULT false, -- the rolling value crossed the agent's threshold here
    threshold       double precision NOT NULL,
    at              timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS call_sentiment_call ON call_sentiment (call_id, id);
