-- Per-tenant transfer allow-list (against toll fraud): the only destinations a live call of the tenant may be
-- handed to (API transfers and agents' transfer_call tools). Owned by control-api; an empty list refuses every
-- transfer. Each row is one pattern: an exact E.164 number, an E.164 prefix ending in '*', or an exact SIP URI
-- (validated and normalised by control-api's usecases/transfers.py; the CHECK is a last line of defence).
CREATE TABLE IF NOT EXISTS transfer_allow_list (
    tenant_id       text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    pattern         text NOT NULL CHECK (
                        pattern ~ '^\+[1-9][0-9]{0,14}\*?$' OR pattern ~ '^sips?:[^\s<>"]{3,250}$'),
    position        integer NOT NULL,
    PRIMARY KEY (tenant_id, pattern)
);
CREATE INDEX IF NOT EXISTS transfer_allow_list_order ON transfer_allow_list (tenant_id, position);
