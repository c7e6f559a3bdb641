-- Every tool call of an agent (analytics, from tool.call / tool.approval_requested / tool.approval_decided /
-- tool.result): what was called with which arguments, the supervisor's decision when the tool needs one (who,
-- when, first decision wins), and the result. Stored with the turn that made the call.
CREATE TABLE IF NOT EXISTS tool_calls (
    tool_call_id        text PRIMARY KEY,
    call_id             text NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    tenant_id           text NOT NULL,
    turn_id             text,
    name                text NOT NULL,
    arguments           jsonb NOT NULL DEFAULT '{}'::jsonb,
    called_at           timestamptz NOT NULL,
    -- approval: none (the tool needs none), pending, approved, denied, timeout
    approval            text NOT NULL DEFAULT 'none'
                        CHECK (approval IN ('none', 'pending', 'approved', 'denied', 'timeout')),
    approval_deadline   timestamptz,
    decided_by          text,
    decided_at          timestamptz,
    decision_comment    text,
    ok                  boolean,                       -- null until the result came
    result              jsonb,
    error               text,
    duration_ms         double precision,
    completed_at        timestamptz
);
CREATE INDEX IF NOT EXISTS tool_calls_call ON tool_calls (call_id, called_at);
CREATE INDEX IF NOT EXISTS tool_calls_pending ON tool_calls (tenant_id, approval) WHERE approval = 'pending';
