-- A search first walks the tenant's newest credentials in id order and reads
-- only their names and integrations (see `search_window`). With both in the
-- index the walk never visits the table, whose rows lie in insertion order,
-- not id order: a walk of thousands of ids read as many scattered table
-- pages. The tenant's index gains the two columns (and serves every use of
-- the one it replaces), and so do the indexes of the two exact filters a
-- search may carry, so that a filtered walk is covered too and keeps its
-- filter's index.
CREATE INDEX credentials_tenant_names ON credentials (tenant_id, id, name, integration_id);
DROP INDEX IF EXISTS credentials_tenant;
DROP INDEX IF EXISTS credentials_integration;
CREATE INDEX credentials_integration ON credentials (tenant_id, integration_id, id, name);
DROP INDEX IF EXISTS credentials_status;
CREATE INDEX credentials_status ON credentials (tenant_id, status, id, name, integration_id);
