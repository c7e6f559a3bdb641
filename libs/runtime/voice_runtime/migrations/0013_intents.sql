-- intents (voice_brain.intents): the intent a caller turn matched, as brain reported it in turn.completed, on the
-- turn's caller row; counted per agent by GET /v1/agents/{id}/intents/stats
ALTER TABLE call_turns ADD COLUMN IF NOT EXISTS intent text;
ALTER TABLE call_turns ADD COLUMN IF NOT EXISTS intent_confidence real;
ALTER TABLE call_turns ADD COLUMN IF NOT EXISTS intent_cached boolean;
CREATE INDEX IF NOT EXISTS call_turns_intent ON call_turns (call_id) WHERE intent IS NOT NULL;
