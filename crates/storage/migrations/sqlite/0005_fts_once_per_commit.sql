-- The name index is written once per commit, not once per job. FTS5 writes
-- its pending terms out as a new index segment at every savepoint it is
-- written in, and every job of a group commit is a savepoint: a create
-- cost a segment (and later its merge). A new credential's row id is now
-- queued here, in the job's savepoint (so a job rolled back leaves no
-- entry), and the writer indexes the queue's names in one statement just
-- before COMMIT, in the same transaction; the queue is empty between
-- commits. A rename or delete of a row still in the queue only updates
-- the queue (the index has not seen the row yet).
CREATE TABLE credentials_fts_pending (
    seq INTEGER PRIMARY KEY
) STRICT;

DROP TRIGGER credentials_fts_insert;
CREATE TRIGGER credentials_fts_insert AFTER INSERT ON credentials BEGIN
    INSERT INTO credentials_fts_pending (seq) VALUES (new.seq);
END;

DROP TRIGGER credentials_fts_delete;
CREATE TRIGGER credentials_fts_delete AFTER DELETE ON credentials BEGIN
    INSERT INTO credentials_fts (credentials_fts, rowid, name)
        SELECT 'delete', old.seq, old.name
        WHERE NOT EXISTS (SELECT 1 FROM credentials_fts_pending WHERE seq = old.seq);
    DELETE FROM credentials_fts_pending WHERE seq = old.seq;
END;

DROP TRIGGER credentials_fts_update;
CREATE TRIGGER credentials_fts_update AFTER UPDATE OF name ON credentials
WHEN NOT EXISTS (SELECT 1 FROM credentials_fts_pending WHERE seq = old.seq) BEGIN
    INSERT INTO credentials_fts (credentials_fts, rowid, name) VALUES ('delete', old.seq, old.name);
    INSERT INTO credentials_fts (rowid, name) VALUES (new.seq, new.name);
END;
