-- Latchkey schema, SQLite. Timestamps are Unix milliseconds (UTC).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    is_operator INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX tenants_name ON tenants (lower(name));

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    hash       BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at INTEGER
) STRICT;
CREATE INDEX tokens_tenant ON tokens (tenant_id, id);

-- seq is the stable rowid the search index points at; id is the public id.
CREATE TABLE credentials (
    seq            INTEGER PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    name           TEXT NOT NULL,
    description    TEXT NOT NULL,
    integration_id TEXT NOT NULL,
    auth_type      TEXT NOT NULL,
    services       TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    params         TEXT NOT NULL,
    secret_fields  TEXT NOT NULL,
    status         TEXT NOT NULL,
    status_message TEXT,
    checked_at     INTEGER,
    version        INTEGER NOT NULL,
    kek_id         TEXT NOT NULL,
    wrapped_dek    BLOB NOT NULL,
    created_at     INTEGER NOT NULL,
    created_by     TEXT NOT NULL,
    updated_at     INTEGER NOT NULL,
    updated_by     TEXT NOT NULL
) STRICT;
CREATE UNIQUE INDEX credentials_name ON credentials (tenant_id, lower(name));
CREATE INDEX credentials_tenant ON credentials (tenant_id, id);
CREATE INDEX credentials_integration ON credentials (tenant_id, integration_id, id);
CREATE INDEX credentials_status ON credentials (tenant_id, status, id);

-- Sealed secret fields; removed with their credential.
CREATE TABLE credential_secrets (
    credential_id TEXT NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    field         TEXT NOT NULL,
    sealed        BLOB NOT NULL,
    PRIMARY KEY (credential_id, field)
) STRICT, WITHOUT ROWID;

-- Substring search on names: a trigram index, so `q` never scans the table.
CREATE VIRTUAL TABLE credentials_fts USING fts5 (
    name, content = 'credentials', content_rowid = 'seq', tokenize = 'trigram'
);
CREATE TRIGGER credentials_fts_insert AFTER INSERT ON credentials BEGIN
    INSERT INTO credentials_fts (rowid, name) VALUES (new.seq, new.name);
END;
CREATE TRIGGER credentials_fts_delete AFTER DELETE ON credentials BEGIN
    INSERT INTO credentials_fts (credentials_fts, rowid, name) VALUES ('delete', old.seq, old.name);
END;
CREATE TRIGGER credentials_fts_update AFTER UPDATE OF name ON credentials BEGIN
    INSERT INTO credentials_fts (credentials_fts, rowid, name) VALUES ('delete', old.seq, old.name);
    INSERT INTO credentials_fts (rowid, name) VALUES (new.seq, new.name);
END;

CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    tenant_id   TEXT NOT NULL,
    actor_id    TEXT NOT NULL,
    actor_name  TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    at          INTEGER NOT NULL,
    source      TEXT,
    details     TEXT NOT NULL
) STRICT;
CREATE INDEX audit_tenant ON audit (tenant_id, id);
