-- A search scans the newest credentials of a tenant in id order, matching
-- lowercased names (see `search_window`). Lowercasing each name there cost
-- more than reading it, so the name is also stored lowercased, once, when
-- it is written. (On an existing table this rewrites it: 34 s for a
-- million credentials on a two-core machine, once.)
ALTER TABLE credentials ADD COLUMN name_folded TEXT GENERATED ALWAYS AS (lower(name)) STORED;

-- This index holds what that scan reads, so PostgreSQL can answer it from
-- the index alone, without a heap page per row; it replaces (tenant_id,
-- id), which it covers.
CREATE INDEX credentials_tenant_names ON credentials (tenant_id, id)
    INCLUDE (seq, name_folded, integration_id);
DROP INDEX credentials_tenant;

-- An index-only scan skips the heap only for pages the visibility map
-- marks all-visible, which a VACUUM does. By default an insert-only table
-- is vacuumed after 20% of its rows are new (200,000 of a million), so the
-- newest rows, the ones a search reads first, would stay unmarked for long.
-- Here a vacuum follows 1,000 new rows and 1% more (autovacuum still looks
-- at most once per naptime, a minute by default).
ALTER TABLE credentials SET (autovacuum_vacuum_insert_scale_factor = 0.01);
