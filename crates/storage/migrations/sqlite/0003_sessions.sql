-- Dashboard sign-in sessions. Only a hash of the session id is stored; a
-- session lives no longer than its token.
CREATE TABLE sessions (
    id_hash    BLOB PRIMARY KEY,
    token_id   TEXT NOT NULL REFERENCES tokens (id),
    csrf       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX sessions_expiry ON sessions (expires_at);
