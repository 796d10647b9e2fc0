-- A new credential's row id goes into the name index's queue (0005) from the
-- writer's code, right after its INSERT, not from a trigger. A statement
-- with a trigger may change more than one row, so SQLite opens a statement
-- journal for it inside a transaction and copies every page the INSERT
-- touches there first: with every job of a group commit running in one
-- transaction, that was most of a create's disk writes. Renames and deletes
-- keep their triggers (0005).
DROP TRIGGER credentials_fts_insert;
