-- Latchkey schema, PostgreSQL: the same tables and columns as the SQLite
-- schema. Timestamps are timestamptz holding whole milliseconds (the store
-- truncates, as the SQLite schema's Unix milliseconds do). Identifiers and
-- other keys that lists order or page by are COLLATE "C", so they sort by
-- bytes as in SQLite whatever the database's locale. Names are unique per
-- tenant case-insensitively with SQLite's folding: lower() under "C" folds
-- ASCII letters only.
CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE tenants (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL,
    is_operator BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX tenants_name ON tenants (lower(name COLLATE "C"));

CREATE TABLE tokens (
    id         TEXT COLLATE "C" PRIMARY KEY,
    tenant_id  TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    hash       BYTEA NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX tokens_tenant ON tokens (tenant_id, id);

-- seq is the stable row number the search points at; id is the public id.
CREATE TABLE credentials (
    seq            BIGSERIAL PRIMARY KEY,
    id             TEXT COLLATE "C" NOT NULL UNIQUE,
    tenant_id      TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    name           TEXT NOT NULL,
    description    TEXT NOT NULL,
    integration_id TEXT COLLATE "C" NOT NULL,
    auth_type      TEXT COLLATE "C" NOT NULL,
    services       JSONB NOT NULL,
    scopes         JSONB NOT NULL,
    params         JSONB NOT NULL,
    secret_fields  JSONB NOT NULL,
    status         TEXT COLLATE "C" NOT NULL,
    status_message TEXT,
    checked_at     TIMESTAMPTZ,
    version        BIGINT NOT NULL,
    kek_id         TEXT NOT NULL,
    wrapped_dek    BYTEA NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    created_by     TEXT NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    updated_by     TEXT NOT NULL
);
CREATE UNIQUE INDEX credentials_name ON credentials (tenant_id, lower(name COLLATE "C"));
CREATE INDEX credentials_tenant ON credentials (tenant_id, id);
CREATE INDEX credentials_integration ON credentials (tenant_id, integration_id, id);
CREATE INDEX credentials_status ON credentials (tenant_id, status, id);

-- Sealed secret fields; removed with their credential.
CREATE TABLE credential_secrets (
    credential_id TEXT COLLATE "C" NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    field         TEXT COLLATE "C" NOT NULL,
    sealed        BYTEA NOT NULL,
    PRIMARY KEY (credential_id, field)
);

-- Substring search on names (the SQLite schema's FTS5 trigram table): a
-- trigram index on lower(name), which `lower(name) LIKE '%…%'` uses, so `q`
-- never scans the table. lower() here is the database's own (Unicode-aware
-- in a UTF-8 locale), as the search lowercases the query the Unicode way.
-- pg_trgm is installed once per database, in public, and shared by every
-- Latchkey schema of it (a schema of its own would take it away from the
-- others when dropped); the operator class is named by the schema the
-- extension really is in, which need not be on this search_path. The query
-- itself needs no extension: without the index it would be a scan.
CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;
DO $$
BEGIN
    EXECUTE format(
        'CREATE INDEX credentials_name_trgm ON credentials USING gin (lower(name) %I.gin_trgm_ops)',
        (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
         WHERE e.extname = 'pg_trgm'));
END
$$;

CREATE TABLE audit (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT COLLATE "C" NOT NULL UNIQUE,
    tenant_id   TEXT COLLATE "C" NOT NULL,
    actor_id    TEXT NOT NULL,
    actor_name  TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    source      TEXT,
    details     JSONB NOT NULL
);
CREATE INDEX audit_tenant ON audit (tenant_id, id);
