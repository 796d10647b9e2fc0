-- Tenants' custom services, received events, user mappings and ingress counters.
CREATE TABLE services (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    description  TEXT NOT NULL,
    integrations TEXT NOT NULL,
    spec         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    updated_at   INTEGER NOT NULL,
    updated_by   TEXT NOT NULL
) STRICT;
CREATE UNIQUE INDEX services_name ON services (tenant_id, lower(name));
CREATE INDEX services_tenant ON services (tenant_id, id);

CREATE TABLE events (
    seq           INTEGER PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    tenant_id     TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    kind          TEXT NOT NULL,
    valid_request INTEGER NOT NULL,
    app_user_id   TEXT,
    user_id       TEXT,
    event_type    TEXT NOT NULL,
    delivery_id   TEXT,
    payload       TEXT NOT NULL,
    received_at   INTEGER NOT NULL
) STRICT;
-- A provider delivery id is stored once per credential and kind.
CREATE UNIQUE INDEX events_delivery ON events (credential_id, kind, delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX events_tenant ON events (tenant_id, id);
CREATE INDEX events_credential ON events (tenant_id, credential_id, id);

CREATE TABLE user_mappings (
    credential_id TEXT NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    app_user_id   TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (credential_id, app_user_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE ingress_counters (
    credential_id TEXT NOT NULL,
    kind          TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    count         INTEGER NOT NULL,
    PRIMARY KEY (credential_id, kind, outcome)
) STRICT, WITHOUT ROWID;
