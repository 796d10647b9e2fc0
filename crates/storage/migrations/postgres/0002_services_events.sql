-- Tenants' custom services, received events, user mappings and ingress counters.
CREATE TABLE services (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT COLLATE "C" NOT NULL UNIQUE,
    tenant_id    TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    description  TEXT NOT NULL,
    integrations JSONB NOT NULL,
    spec         JSONB NOT NULL,
    version      BIGINT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    created_by   TEXT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    updated_by   TEXT NOT NULL
);
CREATE UNIQUE INDEX services_name ON services (tenant_id, lower(name COLLATE "C"));
CREATE INDEX services_tenant ON services (tenant_id, id);

CREATE TABLE events (
    seq           BIGSERIAL PRIMARY KEY,
    id            TEXT COLLATE "C" NOT NULL UNIQUE,
    tenant_id     TEXT COLLATE "C" NOT NULL,
    credential_id TEXT COLLATE "C" NOT NULL,
    kind          TEXT COLLATE "C" NOT NULL,
    valid_request BOOLEAN NOT NULL,
    app_user_id   TEXT,
    user_id       TEXT COLLATE "C",
    event_type    TEXT COLLATE "C" NOT NULL,
    delivery_id   TEXT COLLATE "C",
    payload       JSONB NOT NULL,
    received_at   TIMESTAMPTZ NOT NULL
);
-- A provider delivery id is stored once per credential and kind.
CREATE UNIQUE INDEX events_delivery ON events (credential_id, kind, delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX events_tenant ON events (tenant_id, id);
CREATE INDEX events_credential ON events (tenant_id, credential_id, id);

CREATE TABLE user_mappings (
    credential_id TEXT COLLATE "C" NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    app_user_id   TEXT COLLATE "C" NOT NULL,
    user_id       TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (credential_id, app_user_id)
);

CREATE TABLE ingress_counters (
    credential_id TEXT COLLATE "C" NOT NULL,
    kind          TEXT COLLATE "C" NOT NULL,
    outcome       TEXT COLLATE "C" NOT NULL,
    count         BIGINT NOT NULL,
    PRIMARY KEY (credential_id, kind, outcome)
);
