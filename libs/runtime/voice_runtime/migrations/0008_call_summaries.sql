-- What each turn consumed (turn.completed usage, written by analytics): the model's tokens over every completion of
-- the turn and the characters sent to speech synthesis. Stored on the turn's agent row (its caller row when the
-- turn has no agent row).
ALTER TABLE call_turns
    ADD COLUMN IF NOT EXISTS llm_input_tokens     integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS llm_output_tokens    integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS llm_tokens_estimated boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS tts_characters       integer NOT NULL DEFAULT 0;

-- Per-tenant prices for the cost of a call (control-api, admins); a tenant without a row is priced at zero (USD).
CREATE TABLE IF NOT EXISTS tenant_prices (
    tenant_id                  text PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    currency                   text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    telephony_per_minute       numeric(14, 6) NOT NULL DEFAULT 0 CHECK (telephony_per_minute >= 0),
    stt_per_minute             numeric(14, 6) NOT NULL DEFAULT 0 CHECK (stt_per_minute >= 0),
    llm_input_per_1k_tokens    numeric(14, 6) NOT NULL DEFAULT 0 CHECK (llm_input_per_1k_tokens >= 0),
    llm_output_per_1k_tokens   numeric(14, 6) NOT NULL DEFAULT 0 CHECK (llm_output_per_1k_tokens >= 0),
    tts_per_1k_chars           numeric(14, 6) NOT NULL DEFAULT 0 CHECK (tts_per_1k_chars >= 0),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    version                    integer NOT NULL DEFAULT 1
);

-- The post-call summary, KPIs and cost of an ended call (analytics, once per call: the primary key makes a
-- redelivered call.ended change nothing). The prices are copied in as they were when the call was costed.
CREATE TABLE IF NOT EXISTS call_summaries (
    call_id          text PRIMARY KEY REFERENCES calls(id) ON DELETE CASCADE,
    tenant_id        text NOT NULL,
    agent_id         text NOT NULL,
    summary          text NOT NULL,
    disposition      text NOT NULL,
    tags             text[] NOT NULL DEFAULT '{}',
    source           text NOT NULL CHECK (source IN ('llm', 'extractive')),
    fallback_reason  text,                       -- why the extractive summary was used
    kpis             jsonb NOT NULL,             -- name -> number (voice_analytics.kpis)
    usage            jsonb NOT NULL,             -- telephony_s, stt_audio_s, llm tokens, tts characters
    prices           jsonb NOT NULL,             -- the tenant's price table applied (decimal strings)
    currency         text NOT NULL,
    cost_telephony   numeric(18, 6) NOT NULL,
    cost_stt         numeric(18, 6) NOT NULL,
    cost_llm_input   numeric(18, 6) NOT NULL,
    cost_llm_output  numeric(18, 6) NOT NULL,
    cost_tts         numeric(18, 6) NOT NULL,
    cost_total       numeric(18, 6) NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS call_summaries_tenant_agent ON call_summaries (tenant_id, agent_id);
-- the daily aggregates and first-call resolution look calls up by caller and agent over time
CREATE INDEX IF NOT EXISTS calls_tenant_agent_from ON calls (tenant_id, agent_id, from_number, started_at);
