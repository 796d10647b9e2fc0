-- The master keys the data knows, by fingerprint. The active key wraps new
-- data keys; a draining key is still used by rows that a rotation has not
-- re-wrapped yet; a retired key is used by nothing, and never will be again.
CREATE TABLE master_keys (
    id         TEXT COLLATE "C" PRIMARY KEY,
    state      TEXT NOT NULL CHECK (state IN ('active', 'draining', 'retired')),
    key_check  BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    retired_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX master_keys_one_active ON master_keys (state) WHERE state = 'active';
-- Rotation finds the rows of one key, and status counts them.
CREATE INDEX credentials_kek ON credentials (kek_id);
