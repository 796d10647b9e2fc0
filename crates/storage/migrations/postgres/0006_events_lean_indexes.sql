-- Every stored event updates each of the table's indexes, and an index
-- update costs more than writing the row itself. Two of them served nothing:
-- `seq` (a row number no query reads; events are ordered by their ids, which
-- sort by time) and the index on `id` alone (every read of an event also
-- names its tenant). The primary key becomes (tenant_id, id): it keeps ids
-- unique within a tenant (they are ULIDs made by the server, so unique
-- everywhere) and answers what events_tenant answered, a tenant's events in
-- id order. Five index updates and a sequence step per event become three.
-- Building the new key holds the table's lock for the migration's
-- transaction, so ingress waits meanwhile: 1.2 s for a million events on a
-- two-core machine. A replica still on the older version cannot export
-- (`latchkey copy`, backups) once this has run: it orders events by seq.
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events DROP COLUMN seq;
ALTER TABLE events DROP CONSTRAINT events_id_key;
DROP INDEX events_tenant;
ALTER TABLE events ADD PRIMARY KEY (tenant_id, id);
