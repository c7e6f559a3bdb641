-- Call recordings: one per call of an agent that records. analytics writes the row when it claims the call
-- (status 'recording'), and completes it when the file is in the store ('ready'; 'failed' when it could not be
-- assembled). The object itself lives in the recording store (a directory or S3) under object_key.
CREATE TABLE IF NOT EXISTS call_recordings (
    call_id         text PRIMARY KEY REFERENCES calls(id) ON DELETE CASCADE,
    tenant_id       text NOT NULL,
    status          text NOT NULL DEFAULT 'recording' CHECK (status IN ('recording', 'ready', 'failed')),
    object_key      text NOT NULL,
    store           text NOT NULL,                   -- directory | s3
    retention_days  integer NOT NULL CHECK (retention_days > 0),
    duration_s      double precision,
    size_bytes      bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    ready_at        timestamptz,
    expires_at      timestamptz                      -- set when ready: the retention sweep deletes it after this
);
CREATE INDEX IF NOT EXISTS call_recordings_tenant ON call_recordings (tenant_id, call_id);
CREATE INDEX IF NOT EXISTS call_recordings_expiry ON call_recordings (expires_at) WHERE expires_at IS NOT NULL;
