-- A search first walks the tenant's newest credentials in id order and reads
-- only their names and integrations (see `search_window`). With both in the
-- index the walk never visits the table, whose rows lie in insertion order,
-- not id order: a walk of thousands of ids read as many scattered table
-- pages. The new index serves every use of the one it replaces (tenant, id).
CREATE INDEX credentials_tenant_names ON credentials (tenant_id, id, name, integration_id);
DROP INDEX credentials_tenant;
