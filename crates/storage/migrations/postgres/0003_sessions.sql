-- Dashboard sign-in sessions. Only a hash of the session id is stored; a
-- session lives no longer than its token.
CREATE TABLE sessions (
    id_hash    BYTEA PRIMARY KEY,
    token_id   TEXT COLLATE "C" NOT NULL REFERENCES tokens (id),
    csrf       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);
