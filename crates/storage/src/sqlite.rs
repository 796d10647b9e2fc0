//! The SQLite backend: one writer thread that group-commits every write job
//! queued while the previous commit was running (straight, and when one job
//! fails, again with each job in its own savepoint, so one failing job does
//! not undo the others), and a small pool of read-only connections. WAL with `synchronous=FULL`: a job's result is
//! returned only after the commit that holds it is durable. A second
//! thread checkpoints the WAL into the database file, so the writer's
//! commits do not wait for that copy and its sync.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, types::Value, Connection, OptionalExtension, Row};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::*;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_services_events.sql"),
    include_str!("../migrations/sqlite/0003_sessions.sql"),
    include_str!("../migrations/sqlite/0004_master_keys.sql"),
    include_str!("../migrations/sqlite/0005_fts_once_per_commit.sql"),
    include_str!("../migrations/sqlite/0006_fts_queue_without_trigger.sql"),
    include_str!("../migrations/sqlite/0007_search_scan_index.sql"),
];
/// Most jobs one commit takes; bounds a commit's latency under a flood.
const MAX_BATCH: usize = 512;
const READERS: usize = 4;

/// When the WAL is copied into the database file. SQLite's own rule runs a
/// checkpoint inside every commit that leaves the WAL at 1,000 pages or
/// more, so the writer, and with it every caller waiting for a commit,
/// waits for the copy and for the database file's sync. Here a checkpointer
/// thread with its own connection does that work, `every` so often when
/// something was committed, alongside the writer's commits (`PASSIVE`).
#[derive(Clone, Copy, Debug)]
struct Checkpoints {
    every: Duration,
    /// The writer's connection keeps SQLite's rule, at this many pages
    /// (`wal_autocheckpoint`). The WAL starts again from its beginning
    /// only when a write finds it wholly copied, which writes that never
    /// pause may never let the checkpointer achieve; and a checkpointer
    /// whose checkpoints fail must not let the WAL grow without bound.
    writer_after_pages: u32,
}

const CHECKPOINTS: Checkpoints = Checkpoints {
    every: Duration::from_millis(25),
    writer_after_pages: 4096,
};

/// What the checkpointer is told.
enum Tell {
    /// The writer committed (sent without waiting; one pending is enough).
    Committed,
    /// The store is closing.
    Stop,
}

/// Waits for a commit, lets `rule.every` pass (more commits gather), then
/// copies what the WAL holds into the database file, as far as no reader
/// still needs the WAL, and syncs the file. Idle, it sleeps until the next
/// commit.
fn checkpointer_loop(conn: Connection, told: Receiver<Tell>, rule: Checkpoints) {
    'commits: while let Ok(Tell::Committed) = told.recv() {
        let until = Instant::now() + rule.every;
        loop {
            match told.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(Tell::Committed) => {}
                Err(RecvTimeoutError::Timeout) => break,
                Ok(Tell::Stop) | Err(RecvTimeoutError::Disconnected) => break 'commits,
            }
        }
        // (Busy, when the writer's own checkpoint runs: the next commit retries.)
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "checkpointing the WAL failed; retrying after the next commit");
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::error!(error = %e, "closing the checkpointer's connection failed");
    }
}

struct Checkpointer {
    tell: SyncSender<Tell>,
    thread: std::thread::JoinHandle<()>,
}

/// A write for the writer thread. The writer may run it more than once: a
/// batch runs without savepoints, and when one of its jobs fails the whole
/// transaction is rolled back and every job runs again, each in its own
/// savepoint. So a job must be a function of the database and of what it
/// holds, with no effect outside the connection.
trait WriteJob: Send {
    /// Runs the work; keeps its result for `finish`. False when it failed.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller with the last run's result, given how the commit went.
    fn finish(self: Box<Self>, commit: Result<()>);
}

struct Pending<T, F> {
    work: F,
    result: Option<Result<T>>,
    done: oneshot::Sender<Result<T>>,
}

impl<T, F> WriteJob for Pending<T, F>
where
    T: Send,
    F: FnMut(&Connection) -> Result<T> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.work)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<()>) {
        let answer = match (self.result, commit) {
            (Some(Ok(_)), Err(e)) => Err(e),
            (Some(result), _) => result,
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Err(backend("the writer did not run a job")),
        };
        let _ = self.done.send(answer);
    }
}

type Job = Box<dyn WriteJob>;

pub struct SqliteStore {
    writer: mpsc::Sender<Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
    read_permits: Arc<Semaphore>,
    writer_thread: std::thread::JoinHandle<()>,
    checkpointer: Checkpointer,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

fn open(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA secure_delete = ON;",
    )?;
    if read_only {
        conn.execute_batch("PRAGMA query_only = ON;")?;
    }
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", n + 1))?;
    }
    tx.commit()
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        SqliteStore::open_with(path, CHECKPOINTS)
    }

    fn open_with(path: &Path, checkpoints: Checkpoints) -> Result<SqliteStore> {
        let mut conn = open(path, false).map_err(backend)?;
        migrate(&mut conn).map_err(|e| StoreError::Backend(format!("migration failed: {e}")))?;
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = {}",
            checkpoints.writer_after_pages
        ))
        .map_err(backend)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open(path, true).map_err(backend)?);
        }
        let (tell, told) = std::sync::mpsc::sync_channel(1);
        let checkpointer = {
            let conn = open(path, false).map_err(backend)?;
            let thread = std::thread::Builder::new()
                .name("sqlite-checkpoint".into())
                .spawn(move || checkpointer_loop(conn, told, checkpoints))
                .map_err(backend)?;
            Checkpointer {
                tell: tell.clone(),
                thread,
            }
        };
        let (tx, rx) = mpsc::channel::<Job>(8192);
        let writer_thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, &tell))
            .map_err(backend)?;
        Ok(SqliteStore {
            writer: tx,
            readers: Arc::new(Mutex::new(readers)),
            read_permits: Arc::new(Semaphore::new(READERS)),
            writer_thread,
            checkpointer,
        })
    }

    /// Closes every connection once the queued writes are done. The last
    /// connection to close checkpoints the WAL into the database file and
    /// removes it, so the file then stands alone (a backup is one file).
    /// The readers close first, then the checkpointer's connection, and the
    /// writer last, one after the other:
    /// two connections closing at once each see the other still open, and
    /// neither removes the WAL (a CI run of the backup test found its
    /// `-wal` and `-shm` left behind). Blocks; call it where blocking is
    /// fine.
    pub fn close(self) -> Result<()> {
        let SqliteStore {
            writer,
            readers,
            read_permits,
            writer_thread,
            checkpointer,
        } = self;
        drop(read_permits);
        let readers = Arc::try_unwrap(readers)
            .map_err(|_| backend("a read is still running"))?
            .into_inner()
            .map_err(backend)?;
        for conn in readers {
            conn.close().map_err(|(_, e)| backend(e))?;
        }
        // (Blocks only while a `Committed` waits, until the checkpointer takes it.)
        let _ = checkpointer.tell.send(Tell::Stop);
        checkpointer
            .thread
            .join()
            .map_err(|_| backend("the checkpointer thread panicked"))?;
        drop(writer);
        writer_thread
            .join()
            .map_err(|_| backend("the writer thread panicked"))
    }

    /// Runs `f` inside the next group commit; answers once that commit is
    /// durable. `f` may run more than once (see [`WriteJob`]).
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T> + Send + 'static,
    {
        let (done, wait) = oneshot::channel();
        let job: Job = Box::new(Pending {
            work: f,
            result: None,
            done,
        });
        self.writer
            .send(job)
            .await
            .map_err(|_| backend("the writer has stopped"))?;
        wait.await
            .map_err(|_| backend("the writer dropped a job"))?
    }

    /// A read of one key (a B-tree descent or two: microseconds) on the
    /// calling thread. Handing it to a blocking thread and back would cost
    /// more than the read; scans and searches use [`SqliteStore::read`].
    async fn read_point<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T>,
    {
        let _permit = self.read_permits.acquire().await.map_err(backend)?;
        let reader = Reader::take(&self.readers);
        f(reader.conn())
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(backend)?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let reader = Reader::take(&pool);
            let result = f(reader.conn());
            drop(reader);
            drop(permit);
            result
        })
        .await
        .map_err(backend)?
    }
}

/// A reader connection out of the pool, put back when dropped (also when
/// the read panics). Taken only under a read permit, so there is one.
struct Reader<'a> {
    pool: &'a Mutex<Vec<Connection>>,
    conn: Option<Connection>,
}

impl<'a> Reader<'a> {
    fn take(pool: &'a Mutex<Vec<Connection>>) -> Reader<'a> {
        let conn = pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .expect("a permit guarantees a reader");
        Reader {
            pool,
            conn: Some(conn),
        }
    }

    fn conn(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a reader holds its connection until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // A read that stopped inside its transaction (a panic) must not
            // hand the next one an old snapshot. (Ending a read-only
            // transaction does not fail; the pool must keep its size.)
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            self.pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }
}

fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Job>, tell: &SyncSender<Tell>) {
    writer_jobs(&conn, &mut rx, tell);
    if let Err((_, e)) = conn.close() {
        tracing::error!(error = %e, "closing the database failed");
    }
}

fn writer_jobs(conn: &Connection, rx: &mut mpsc::Receiver<Job>, tell: &SyncSender<Tell>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let commit = commit_batch(conn, &mut batch);
        if commit.is_ok() {
            let _ = tell.try_send(Tell::Committed);
        }
        for job in batch {
            job.finish(commit.clone());
        }
    }
}

/// Runs a batch in one transaction and commits it. First every job runs
/// straight, without savepoints: a savepoint makes SQLite copy each page a
/// job touches, which its batch's earlier jobs have touched too, into a
/// sub-journal (most of a create's writes). Only when a job fails is the
/// transaction rolled back and the batch run again with one savepoint per
/// job, so the failed job's changes are undone alone.
fn commit_batch(conn: &Connection, batch: &mut [Job]) -> Result<()> {
    let begin = || {
        // A transaction still open here is an earlier batch's whose
        // ROLLBACK failed: its callers were answered with the error, so its
        // changes go. Left open, it would fail every BEGIN after it, and so
        // every write until a restart.
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK").map_err(|e| {
                tracing::error!(error = %e, "could not end an earlier failed write transaction");
                backend(e)
            })?;
        }
        conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| {
            tracing::error!(error = %e, "could not begin a write transaction");
            backend(e)
        })
    };
    begin()?;
    if batch.iter_mut().all(|job| job.run(conn)) {
        return commit(conn);
    }
    // (Some errors end the transaction themselves.)
    if !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "rolling back a failed batch failed");
            return Err(backend(e));
        }
    }
    begin()?;
    for job in batch.iter_mut() {
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(backend(e));
        }
        let end = if job.run(conn) {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        if let Err(e) = conn.execute_batch(end) {
            tracing::error!(error = %e, "savepoint end failed");
            let _ = conn.execute_batch("ROLLBACK");
            return Err(backend(e));
        }
    }
    commit(conn)
}

/// Commits the open transaction, with the names created in it going into
/// the search index first; if either fails, nothing of it is stored.
fn commit(conn: &Connection) -> Result<()> {
    let done = index_new_names(conn).and_then(|()| conn.execute_batch("COMMIT").map_err(backend));
    if done.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    done
}

/// Indexes the queued names. `CROSS JOIN` keeps the queue (a handful of
/// rows) as the outer loop: left to itself, SQLite (no statistics) chose to
/// scan every credential through the covering index of migration 0007 and
/// look each up in the queue, which made a create 30 times slower at
/// 1,000,000 credentials.
const INDEX_QUEUED_NAMES_SQL: &str = "INSERT INTO credentials_fts (rowid, name)
     SELECT c.seq, c.name FROM credentials_fts_pending p CROSS JOIN credentials c ON c.seq = p.seq";

/// Indexes the names of the credentials created in the open transaction
/// (queued by the insert trigger, see migration 0005) and empties the queue.
fn index_new_names(conn: &Connection) -> Result<()> {
    let queued: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM credentials_fts_pending)")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)?;
    if !queued {
        return Ok(());
    }
    conn.prepare_cached(INDEX_QUEUED_NAMES_SQL)
        .and_then(|mut s| s.execute([]))
        .and_then(|_| {
            conn.prepare_cached("DELETE FROM credentials_fts_pending")
                .and_then(|mut s| s.execute([]))
        })
        .map(|_| ())
        .map_err(backend)
}

fn insert_credential(
    c: &Connection,
    rec: &CredentialRecord,
    secrets: &[SealedSecret],
) -> Result<()> {
    refuse_retired_key(c, &rec.kek_id)?;
    name_clash(c, &rec.tenant_id, &rec.name, &rec.id)?;
    c.prepare_cached(&format!(
        "INSERT INTO credentials ({CREDENTIAL_COLUMNS}) VALUES
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
    ))
    .and_then(|mut s| {
        s.execute(params![
            rec.id, rec.tenant_id, rec.name, rec.description, rec.integration_id, rec.auth_type,
            json(&rec.services), json(&rec.scopes), json(&rec.params), json(&rec.secret_fields),
            rec.status, rec.status_message, rec.checked_at.map(ms), rec.version, rec.kek_id,
            rec.wrapped_dek, ms(rec.created_at), rec.created_by, ms(rec.updated_at), rec.updated_by
        ])
    })
    .map_err(backend)?;
    // Into the name index at the commit (see `index_new_names`).
    c.prepare_cached("INSERT INTO credentials_fts_pending (seq) VALUES (?1)")
        .and_then(|mut s| s.execute([c.last_insert_rowid()]))
        .map_err(backend)?;
    put_secrets(c, &rec.id, secrets)
}

/// A data key wrapped by a retired master key must not be stored: nothing
/// would re-wrap it. (The single writer orders this against `retire_key`.)
fn refuse_retired_key(c: &Connection, kek_id: &str) -> Result<()> {
    let state: Option<String> = c
        .prepare_cached("SELECT state FROM master_keys WHERE id = ?1")
        .and_then(|mut s| s.query_row([kek_id], |r| r.get(0)).optional())
        .map_err(backend)?;
    match state.as_deref() {
        Some("retired") => Err(StoreError::KeyRetired(kek_id.to_string())),
        _ => Ok(()),
    }
}

/// id, state, key check, created and retired (ms).
type KeyRow = (String, String, Vec<u8>, i64, Option<i64>);

fn key_from_row(r: &Row) -> rusqlite::Result<KeyRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn update_credential(c: &Connection, u: &CredentialUpdate) -> Result<()> {
    let rec = &u.record;
    let current: Option<i64> = c
        .query_row(
            "SELECT version FROM credentials WHERE tenant_id = ?1 AND id = ?2",
            params![rec.tenant_id, rec.id],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    match current {
        None => return Err(StoreError::NotFound),
        Some(v) if v != u.expected_version => {
            return Err(StoreError::VersionMismatch { current: v })
        }
        Some(_) => {}
    }
    name_clash(c, &rec.tenant_id, &rec.name, &rec.id)?;
    c.prepare_cached(
        "UPDATE credentials SET name = ?3, description = ?4, services = ?5, scopes = ?6, params = ?7,
           secret_fields = ?8, status = ?9, status_message = ?10, checked_at = ?11, version = ?12,
           updated_at = ?13, updated_by = ?14, integration_id = ?15, auth_type = ?16
         WHERE tenant_id = ?1 AND id = ?2",
    )
    .and_then(|mut s| {
        s.execute(params![
            rec.tenant_id, rec.id, rec.name, rec.description, json(&rec.services), json(&rec.scopes),
            json(&rec.params), json(&rec.secret_fields), rec.status, rec.status_message,
            rec.checked_at.map(ms), rec.version, ms(rec.updated_at), rec.updated_by,
            rec.integration_id, rec.auth_type
        ])
    })
    .map_err(backend)?;
    put_secrets(c, &rec.id, &u.put_secrets)?;
    for field in &u.remove_secrets {
        c.execute(
            "DELETE FROM credential_secrets WHERE credential_id = ?1 AND field = ?2",
            params![rec.id, field],
        )
        .map_err(backend)?;
    }
    Ok(())
}

fn write_audit(conn: &Connection, a: &AuditEntry) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit (id, tenant_id, actor_id, actor_name, action, target_type, target_id, at, source, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            a.id, a.tenant_id, a.actor_id, a.actor_name, a.action, a.target_type, a.target_id,
            ms(a.at), a.source, a.details.to_string()
        ])
    })
    .map_err(backend)?;
    Ok(())
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

fn parse_json<T: serde::de::DeserializeOwned>(s: String) -> rusqlite::Result<T> {
    serde_json::from_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

const CREDENTIAL_COLUMNS: &str = "id, tenant_id, name, description, integration_id, auth_type, services, scopes, params,
    secret_fields, status, status_message, checked_at, version, kek_id, wrapped_dek, created_at, created_by, updated_at, updated_by";

fn credential_from_row(r: &Row) -> rusqlite::Result<CredentialRecord> {
    Ok(CredentialRecord {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        integration_id: r.get(4)?,
        auth_type: r.get(5)?,
        services: parse_json(r.get(6)?)?,
        scopes: parse_json(r.get(7)?)?,
        params: parse_json(r.get(8)?)?,
        secret_fields: parse_json(r.get(9)?)?,
        status: r.get(10)?,
        status_message: r.get(11)?,
        checked_at: r.get::<_, Option<i64>>(12)?.map(from_ms),
        version: r.get(13)?,
        kek_id: r.get(14)?,
        wrapped_dek: r.get(15)?,
        created_at: from_ms(r.get(16)?),
        created_by: r.get(17)?,
        updated_at: from_ms(r.get(18)?),
        updated_by: r.get(19)?,
    })
}

fn tenant_from_row(r: &Row, at: usize) -> rusqlite::Result<TenantRecord> {
    Ok(TenantRecord {
        id: r.get(at)?,
        name: r.get(at + 1)?,
        is_operator: r.get(at + 2)?,
        created_at: from_ms(r.get(at + 3)?),
    })
}

fn token_from_row(r: &Row, at: usize) -> rusqlite::Result<TokenRecord> {
    let hash: Vec<u8> = r.get(at + 4)?;
    Ok(TokenRecord {
        id: r.get(at)?,
        tenant_id: r.get(at + 1)?,
        name: r.get(at + 2)?,
        role: r.get(at + 3)?,
        hash: hash.try_into().unwrap_or([0; 32]),
        created_at: from_ms(r.get(at + 5)?),
        created_by: r.get(at + 6)?,
        revoked_at: r.get::<_, Option<i64>>(at + 7)?.map(from_ms),
    })
}

fn name_clash(conn: &Connection, tenant: &str, name: &str, except: &str) -> Result<()> {
    let clash: Option<String> = conn
        .prepare_cached("SELECT id FROM credentials WHERE tenant_id = ?1 AND lower(name) = lower(?2) AND id <> ?3")
        .and_then(|mut s| s.query_row(params![tenant, name, except], |r| r.get(0)).optional())
        .map_err(backend)?;
    match clash {
        Some(id) => Err(StoreError::NameTaken(id)),
        None => Ok(()),
    }
}

fn put_secrets(conn: &Connection, credential: &str, secrets: &[SealedSecret]) -> Result<()> {
    let mut stmt = conn
        // An upsert, not INSERT OR REPLACE: a REPLACE on a table with a
        // foreign key makes SQLite journal the statement's pages first.
        .prepare_cached(
            "INSERT INTO credential_secrets (credential_id, field, sealed) VALUES (?1, ?2, ?3)
             ON CONFLICT (credential_id, field) DO UPDATE SET sealed = excluded.sealed",
        )
        .map_err(backend)?;
    for s in secrets {
        stmt.execute(params![credential, s.field, s.sealed])
            .map_err(backend)?;
    }
    Ok(())
}

/// Runs `read` in one read transaction, so its statements read one
/// snapshot. BEGIN and COMMIT are cached statements: `execute_batch` would
/// parse them again on every call.
fn in_snapshot<T>(c: &Connection, read: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    let run = |sql| {
        c.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map_err(backend)
    };
    run("BEGIN")?;
    let found = read(c);
    run("COMMIT")?;
    found
}

/// An FTS5 phrase query for a substring (the trigram tokenizer needs ≥ 3 characters).
fn fts_phrase(q: &str) -> String {
    format!("\"{}\"", q.replace('"', "\"\""))
}

#[async_trait]
impl Store for SqliteStore {
    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read_point(move |c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn meta_put_if_absent(&self, key: &str, value: Vec<u8>) -> Result<bool> {
        let key = key.to_string();
        self.write(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .map(|n| n == 1)
            .map_err(backend)
        })
        .await
    }

    async fn has_credentials(&self) -> Result<bool> {
        self.read(|c| {
            c.query_row("SELECT EXISTS (SELECT 1 FROM credentials)", [], |r| {
                r.get(0)
            })
            .map_err(backend)
        })
        .await
    }

    async fn create_tenant(
        &self,
        t: TenantRecord,
        admin: TokenRecord,
        audit: Option<AuditEntry>,
    ) -> Result<()> {
        self.write(move |c| {
            let exists: bool = c
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM tenants WHERE lower(name) = lower(?1))",
                    [&t.name],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if exists {
                return Err(StoreError::Conflict);
            }
            c.execute(
                "INSERT INTO tenants (id, name, is_operator, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![t.id, t.name, t.is_operator, ms(t.created_at)],
            )
            .map_err(backend)?;
            insert_token(c, &admin)?;
            if let Some(a) = &audit {
                write_audit(c, a)?;
            }
            Ok(())
        })
        .await
    }

    async fn list_tenants(&self, p: PageRequest<'_>) -> Result<Page<TenantRecord>> {
        let (limit, after) = (p.limit, p.after.map(str::to_string));
        self.read(move |c| {
            let mut s = c
                .prepare_cached(
                    "SELECT id, name, is_operator, created_at FROM tenants
                     WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
                )
                .map_err(backend)?;
            let items = s
                .query_map(params![after, limit as i64 + 1], |r| tenant_from_row(r, 0))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(backend)?;
            Ok(page(items, limit, |t| &t.id))
        })
        .await
    }

    async fn tenant_count(&self) -> Result<u64> {
        self.read(|c| {
            c.query_row("SELECT count(*) FROM tenants", [], |r| r.get(0))
                .map_err(backend)
        })
        .await
    }

    async fn create_token(&self, token: TokenRecord, audit: AuditEntry) -> Result<()> {
        self.write(move |c| {
            insert_token(c, &token)?;
            write_audit(c, &audit)
        })
        .await
    }

    async fn list_tokens(&self, tenant: &str, p: PageRequest<'_>) -> Result<Page<TokenRecord>> {
        let (tenant, limit, after) = (tenant.to_string(), p.limit, p.after.map(str::to_string));
        self.read(move |c| {
            let mut s = c
                .prepare_cached(
                    "SELECT id, tenant_id, name, role, hash, created_at, created_by, revoked_at FROM tokens
                     WHERE tenant_id = ?1 AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3",
                )
                .map_err(backend)?;
            let items = s
                .query_map(params![tenant, after, limit as i64 + 1], |r| token_from_row(r, 0))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(backend)?;
            Ok(page(items, limit, |t| &t.id))
        })
        .await
    }

    async fn revoke_token(
        &self,
        tenant: &str,
        id: &str,
        at: DateTime<Utc>,
        audit: AuditEntry,
    ) -> Result<()> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE tokens SET revoked_at = ?3 WHERE tenant_id = ?1 AND id = ?2 AND revoked_at IS NULL",
                    params![tenant, id, ms(at)],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            write_audit(c, &audit)
        })
        .await
    }

    async fn find_token(&self, hash: [u8; 32]) -> Result<Option<(TokenRecord, TenantRecord)>> {
        self.read_point(move |c| find_token(c, &hash)).await
    }

    async fn insert_credential(
        &self,
        rec: CredentialRecord,
        secrets: Vec<SealedSecret>,
        audit: AuditEntry,
    ) -> Result<()> {
        self.write(move |c| {
            insert_credential(c, &rec, &secrets)?;
            write_audit(c, &audit)
        })
        .await
    }

    async fn import_credentials(&self, items: Vec<ImportItem>, audit: AuditEntry) -> Result<()> {
        self.write(move |c| {
            for item in &items {
                match item {
                    ImportItem::Insert(rec, secrets) => insert_credential(c, rec, secrets)?,
                    ImportItem::Update(u) => update_credential(c, u)?,
                }
            }
            write_audit(c, &audit)
        })
        .await
    }

    async fn get_credential(&self, tenant: &str, id: &str) -> Result<Option<CredentialRecord>> {
        self.read_point(move |c| get_credential(c, tenant, id))
            .await
    }
    async fn credential_id_by_name(&self, tenant: &str, name: &str) -> Result<Option<String>> {
        self.read_point(move |c| match name_clash(c, tenant, name, "") {
            Err(StoreError::NameTaken(id)) => Ok(Some(id)),
            Err(e) => Err(e),
            Ok(()) => Ok(None),
        })
        .await
    }

    async fn get_sealed(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(CredentialRecord, Vec<SealedSecret>)>> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.read(move |c| {
            let Some(rec) = get_credential(c, &tenant, &id)? else {
                return Ok(None);
            };
            Ok(Some((rec, sealed_secrets(c, &id)?)))
        })
        .await
    }

    async fn list_credentials(
        &self,
        tenant: &str,
        f: &CredentialFilter,
        p: PageRequest<'_>,
    ) -> Result<Page<CredentialRecord>> {
        // The conditions every phase shares: tenant, exact filters, cursor.
        let mut base = String::from("c.tenant_id = ?");
        let mut base_args: Vec<Value> = vec![tenant.to_string().into()];
        for (column, value) in [
            ("integration_id", &f.integration),
            ("auth_type", &f.auth_type),
            ("status", &f.status),
        ] {
            if let Some(v) = value {
                base.push_str(&format!(" AND c.{column} = ?"));
                base_args.push(v.clone().into());
            }
        }
        if let Some(after) = p.after {
            base.push_str(" AND c.id < ?");
            base_args.push(after.to_string().into());
        }
        let limit = p.limit;
        let auth_type = f.auth_type.clone();
        let q = f.q.clone().filter(|q| !q.is_empty());
        let q_integrations = f.q_integrations.clone();
        self.read(move |c| {
            let Some(q) = q else {
                let sql = format!(
                    "SELECT {CREDENTIAL_COLUMNS} FROM credentials c WHERE {base} ORDER BY c.id DESC LIMIT ?"
                );
                let mut args = base_args;
                args.push((limit as i64 + 1).into());
                return Ok(page(query_credentials(c, &sql, args)?, limit, |c| &c.id));
            };
            // The walk goes past its first window only where an index
            // covers it: not with an `auth_type` filter, which no index has.
            let stretch = auth_type.is_none();
            // The walk, the index and the rows they lead to are read in one
            // snapshot: a write committed between two of the statements
            // could otherwise move or renumber a match.
            in_snapshot(c, |c| {
                search(c, &base, base_args, &q, &q_integrations, limit, stretch)
            })
        })
        .await
    }

    async fn update_credential(&self, u: CredentialUpdate, audit: AuditEntry) -> Result<()> {
        self.write(move |c| {
            update_credential(c, &u)?;
            write_audit(c, &audit)
        })
        .await
    }

    async fn delete_credential(&self, tenant: &str, id: &str, audit: AuditEntry) -> Result<()> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.write(move |c| {
            // Secrets go with the row (ON DELETE CASCADE); secure_delete zeroes the freed pages.
            let n = c
                .execute(
                    "DELETE FROM credentials WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant, id],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            c.execute("DELETE FROM events WHERE credential_id = ?1", [&id])
                .map_err(backend)?;
            c.execute(
                "DELETE FROM ingress_counters WHERE credential_id = ?1",
                [&id],
            )
            .map_err(backend)?;
            write_audit(c, &audit)
        })
        .await
    }

    async fn list_audit(&self, tenant: &str, p: PageRequest<'_>) -> Result<Page<AuditEntry>> {
        let (tenant, limit, after) = (tenant.to_string(), p.limit, p.after.map(str::to_string));
        self.read(move |c| {
            let mut s = c
                .prepare_cached(
                    "SELECT id, tenant_id, actor_id, actor_name, action, target_type, target_id, at, source, details
                     FROM audit WHERE tenant_id = ?1 AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3",
                )
                .map_err(backend)?;
            let items = s
                .query_map(params![tenant, after, limit as i64 + 1], |r| {
                    Ok(AuditEntry {
                        id: r.get(0)?,
                        tenant_id: r.get(1)?,
                        actor_id: r.get(2)?,
                        actor_name: r.get(3)?,
                        action: r.get(4)?,
                        target_type: r.get(5)?,
                        target_id: r.get(6)?,
                        at: from_ms(r.get(7)?),
                        source: r.get(8)?,
                        details: parse_json(r.get(9)?)?,
                    })
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(backend)?;
            Ok(page(items, limit, |a| &a.id))
        })
        .await
    }

    async fn record_audit(&self, audit: AuditEntry) -> Result<()> {
        self.write(move |c| write_audit(c, &audit)).await
    }

    async fn set_credential_status(
        &self,
        tenant: &str,
        id: &str,
        status: &str,
        message: &str,
        checked_at: DateTime<Utc>,
        audit: AuditEntry,
    ) -> Result<()> {
        let (tenant, id, status, message) = (
            tenant.to_string(),
            id.to_string(),
            status.to_string(),
            message.to_string(),
        );
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE credentials SET status = ?3, status_message = ?4, checked_at = ?5
                     WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant, id, status, message, ms(checked_at)],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            write_audit(c, &audit)
        })
        .await
    }

    async fn get_sealed_by_id(
        &self,
        id: &str,
    ) -> Result<Option<(CredentialRecord, Vec<SealedSecret>)>> {
        self.read_point(move |c| {
            let rec = c
                .prepare_cached(&format!(
                    "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = ?1"
                ))
                .and_then(|mut s| s.query_row([&id], credential_from_row).optional())
                .map_err(backend)?;
            let Some(rec) = rec else { return Ok(None) };
            let secrets = sealed_secrets(c, id)?;
            Ok(Some((rec, secrets)))
        })
        .await
    }

    async fn create_service(&self, svc: ServiceRecord, audit: AuditEntry) -> Result<()> {
        self.write(move |c| {
            service_name_clash(c, &svc)?;
            c.execute(
                &format!("INSERT INTO services ({SERVICE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                params![
                    svc.id, svc.tenant_id, svc.name, svc.role, svc.description, json(&svc.integrations),
                    svc.spec.to_string(), svc.version, ms(svc.created_at), svc.created_by,
                    ms(svc.updated_at), svc.updated_by
                ],
            )
            .map_err(backend)?;
            write_audit(c, &audit)
        })
        .await
    }

    async fn get_service(&self, tenant: &str, id: &str) -> Result<Option<ServiceRecord>> {
        self.read_point(move |c| {
            c.prepare_cached(&format!(
                "SELECT {SERVICE_COLUMNS} FROM services WHERE tenant_id = ?1 AND id = ?2"
            ))
            .and_then(|mut s| s.query_row([&tenant, &id], service_from_row).optional())
            .map_err(backend)
        })
        .await
    }

    async fn list_services(&self, tenant: &str) -> Result<Vec<ServiceRecord>> {
        let tenant = tenant.to_string();
        self.read(move |c| {
            let mut s = c
                .prepare_cached(&format!(
                    "SELECT {SERVICE_COLUMNS} FROM services WHERE tenant_id = ?1 ORDER BY id DESC"
                ))
                .map_err(backend)?;
            let rows = s
                .query_map([&tenant], service_from_row)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(backend)?;
            Ok(rows)
        })
        .await
    }

    async fn update_service(
        &self,
        svc: ServiceRecord,
        expected_version: i64,
        force: bool,
        audit: AuditEntry,
    ) -> Result<()> {
        self.write(move |c| {
            let current: Option<i64> = c
                .query_row(
                    "SELECT version FROM services WHERE tenant_id = ?1 AND id = ?2",
                    params![svc.tenant_id, svc.id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            match current {
                None => return Err(StoreError::NotFound),
                Some(v) if v != expected_version => {
                    return Err(StoreError::VersionMismatch { current: v })
                }
                Some(_) => {}
            }
            if !force {
                let users = credentials_using(c, &svc.tenant_id, &svc.id)?;
                if !users.is_empty() {
                    return Err(StoreError::InUse(users));
                }
            }
            service_name_clash(c, &svc)?;
            c.execute(
                "UPDATE services SET name = ?3, description = ?4, integrations = ?5, spec = ?6, version = ?7,
                   updated_at = ?8, updated_by = ?9 WHERE tenant_id = ?1 AND id = ?2",
                params![
                    svc.tenant_id, svc.id, svc.name, svc.description, json(&svc.integrations),
                    svc.spec.to_string(), svc.version, ms(svc.updated_at), svc.updated_by
                ],
            )
            .map_err(backend)?;
            write_audit(c, &audit)
        })
        .await
    }

    async fn delete_service(&self, tenant: &str, id: &str, audit: AuditEntry) -> Result<()> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.write(move |c| {
            let users = credentials_using(c, &tenant, &id)?;
            if !users.is_empty() {
                return Err(StoreError::InUse(users));
            }
            let n = c
                .execute(
                    "DELETE FROM services WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant, id],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            write_audit(c, &audit)
        })
        .await
    }

    async fn store_event(&self, mut new: NewEvent) -> Result<EventStored> {
        // Serialized, and its tree freed, here on the caller's thread: the
        // writer's time is every waiting caller's.
        let payload = std::mem::take(&mut new.event.payload).to_string();
        self.write(move |c| {
            let NewEvent {
                event: e,
                credential_version,
                map_user,
            } = &new;
            let (credential_version, map_user) = (*credential_version, *map_user);
            // The writer runs one job at a time, so what is checked here still
            // holds at the commit.
            if let Some(expected) = credential_version {
                let current: Option<i64> = c
                    .prepare_cached("SELECT version FROM credentials WHERE id = ?1")
                    .and_then(|mut s| s.query_row([&e.credential_id], |r| r.get(0)).optional())
                    .map_err(backend)?;
                if current != Some(expected) {
                    return Ok(EventStored::CredentialChanged);
                }
            }
            let user_id = match (&e.user_id, &e.app_user_id) {
                (None, Some(app_user)) if map_user => c
                    .prepare_cached(
                        "SELECT user_id FROM user_mappings WHERE credential_id = ?1 AND app_user_id = ?2",
                    )
                    .and_then(|mut s| {
                        s.query_row([&e.credential_id, app_user], |r| r.get(0))
                            .optional()
                    })
                    .map_err(backend)?,
                _ => e.user_id.clone(),
            };
            let n = c
                .prepare_cached(&format!(
                    "INSERT INTO events ({EVENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (credential_id, kind, delivery_id) WHERE delivery_id IS NOT NULL DO NOTHING"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        e.id, e.tenant_id, e.credential_id, e.kind, e.valid_request, e.app_user_id,
                        user_id, e.event_type, e.delivery_id, payload, ms(e.received_at)
                    ])
                })
                .map_err(backend)?;
            Ok(if n == 1 {
                EventStored::Stored { user_id }
            } else {
                EventStored::Duplicate
            })
        })
        .await
    }

    async fn get_event(&self, tenant: &str, id: &str) -> Result<Option<EventRecord>> {
        self.read_point(move |c| {
            c.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = ?1 AND id = ?2"
            ))
            .and_then(|mut s| s.query_row([&tenant, &id], event_from_row).optional())
            .map_err(backend)
        })
        .await
    }

    async fn list_events(
        &self,
        tenant: &str,
        f: &EventFilter,
        p: PageRequest<'_>,
    ) -> Result<Page<EventRecord>> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = ?");
        let mut args: Vec<Value> = vec![tenant.to_string().into()];
        for (column, value) in [
            ("credential_id", &f.credential_id),
            ("kind", &f.kind),
            ("event_type", &f.event_type),
            ("user_id", &f.user_id),
        ] {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                args.push(v.clone().into());
            }
        }
        if let Some(after) = p.after {
            sql.push_str(" AND id < ?");
            args.push(after.to_string().into());
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push((p.limit as i64 + 1).into());
        let limit = p.limit;
        self.read(move |c| {
            let mut s = c.prepare_cached(&sql).map_err(backend)?;
            let items = s
                .query_map(rusqlite::params_from_iter(args), event_from_row)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(backend)?;
            Ok(page(items, limit, |e| &e.id))
        })
        .await
    }

    async fn put_user_mapping(
        &self,
        tenant: &str,
        credential: &str,
        m: UserMapping,
        audit: AuditEntry,
    ) -> Result<()> {
        let (tenant, credential) = (tenant.to_string(), credential.to_string());
        self.write(move |c| {
            owned_credential(c, &tenant, &credential)?;
            c.execute(
                "INSERT INTO user_mappings (credential_id, app_user_id, user_id, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (credential_id, app_user_id) DO UPDATE SET user_id = excluded.user_id",
                params![credential, m.app_user_id, m.user_id, ms(m.created_at)],
            )
            .map_err(backend)?;
            write_audit(c, &audit)
        })
        .await
    }

    async fn delete_user_mapping(
        &self,
        tenant: &str,
        credential: &str,
        app_user_id: &str,
        audit: AuditEntry,
    ) -> Result<()> {
        let (tenant, credential, app_user_id) = (
            tenant.to_string(),
            credential.to_string(),
            app_user_id.to_string(),
        );
        self.write(move |c| {
            owned_credential(c, &tenant, &credential)?;
            let n = c
                .execute(
                    "DELETE FROM user_mappings WHERE credential_id = ?1 AND app_user_id = ?2",
                    params![credential, app_user_id],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            write_audit(c, &audit)
        })
        .await
    }

    async fn list_user_mappings(
        &self,
        tenant: &str,
        credential: &str,
        p: PageRequest<'_>,
    ) -> Result<Page<UserMapping>> {
        let (tenant, credential) = (tenant.to_string(), credential.to_string());
        let (limit, after) = (p.limit, p.after.map(str::to_string));
        self.read(move |c| {
            owned_credential(c, &tenant, &credential)?;
            let mut s = c
                .prepare_cached(
                    "SELECT app_user_id, user_id, created_at FROM user_mappings
                     WHERE credential_id = ?1 AND (?2 IS NULL OR app_user_id > ?2)
                     ORDER BY app_user_id LIMIT ?3",
                )
                .map_err(backend)?;
            let items = s
                .query_map(params![credential, after, limit as i64 + 1], |r| {
                    Ok(UserMapping {
                        app_user_id: r.get(0)?,
                        user_id: r.get(1)?,
                        created_at: from_ms(r.get(2)?),
                    })
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(backend)?;
            Ok(page(items, limit, |m| &m.app_user_id))
        })
        .await
    }

    async fn find_user_mapping(
        &self,
        credential: &str,
        app_user_id: &str,
    ) -> Result<Option<String>> {
        self.read_point(move |c| {
            c.prepare_cached(
                "SELECT user_id FROM user_mappings WHERE credential_id = ?1 AND app_user_id = ?2",
            )
            .and_then(|mut s| {
                s.query_row([&credential, &app_user_id], |r| r.get(0))
                    .optional()
            })
            .map_err(backend)
        })
        .await
    }

    async fn create_session(&self, s: SessionRecord) -> Result<()> {
        self.write(move |c| {
            // Expired sessions go as new ones come.
            c.execute("DELETE FROM sessions WHERE expires_at < ?1", [ms(s.created_at)])
                .map_err(backend)?;
            c.execute(
                "INSERT INTO sessions (id_hash, token_id, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![s.id_hash.as_slice(), s.token_id, s.csrf, ms(s.created_at), ms(s.expires_at)],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn find_session(
        &self,
        id_hash: [u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<(SessionRecord, TokenRecord, TenantRecord)>> {
        self.read_point(move |c| {
            c.prepare_cached(
                "SELECT k.id, k.tenant_id, k.name, k.role, k.hash, k.created_at, k.created_by, k.revoked_at,
                        t.id, t.name, t.is_operator, t.created_at, s.csrf, s.created_at, s.expires_at
                 FROM sessions s JOIN tokens k ON k.id = s.token_id JOIN tenants t ON t.id = k.tenant_id
                 WHERE s.id_hash = ?1 AND s.expires_at > ?2 AND k.revoked_at IS NULL",
            )
            .and_then(|mut st| {
                st.query_row(params![id_hash.as_slice(), ms(now)], |r| {
                    let token = token_from_row(r, 0)?;
                    let session = SessionRecord {
                        id_hash,
                        token_id: token.id.clone(),
                        csrf: r.get(12)?,
                        created_at: from_ms(r.get(13)?),
                        expires_at: from_ms(r.get(14)?),
                    };
                    Ok((session, token, tenant_from_row(r, 8)?))
                })
                .optional()
            })
            .map_err(backend)
        })
        .await
    }

    async fn delete_session(&self, id_hash: [u8; 32]) -> Result<()> {
        self.write(move |c| {
            c.execute(
                "DELETE FROM sessions WHERE id_hash = ?1",
                [id_hash.as_slice()],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn add_counters(&self, deltas: Vec<CounterDelta>) -> Result<()> {
        self.write(move |c| {
            let mut s = c
                .prepare_cached(
                    "INSERT INTO ingress_counters (credential_id, kind, outcome, count) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (credential_id, kind, outcome) DO UPDATE SET count = count + excluded.count",
                )
                .map_err(backend)?;
            for d in &deltas {
                s.execute(params![d.credential_id, d.kind, d.outcome, d.count as i64])
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        self.read(|c| {
            let rows = c
                .prepare_cached(
                    "SELECT id, state, key_check, created_at, retired_at FROM master_keys
                     ORDER BY created_at, id",
                )
                .and_then(|mut s| {
                    s.query_map([], key_from_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            rows.into_iter()
                .map(|(id, state, key_check, created, retired)| {
                    Ok(KeyRecord {
                        id,
                        state: KeyState::parse(&state)?,
                        key_check,
                        created_at: from_ms(created),
                        retired_at: retired.map(from_ms),
                    })
                })
                .collect()
        })
        .await
    }

    async fn add_first_key(&self, key: KeyRecord) -> Result<bool> {
        self.write(move |c| {
            let any: bool = c
                .query_row("SELECT EXISTS (SELECT 1 FROM master_keys)", [], |r| r.get(0))
                .map_err(backend)?;
            if any {
                return Ok(false);
            }
            c.execute(
                "INSERT INTO master_keys (id, state, key_check, created_at) VALUES (?1, 'active', ?2, ?3)",
                params![key.id, key.key_check, ms(key.created_at)],
            )
            .map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn rotate_key(&self, from: &str, to: KeyRecord, audit: AuditEntry) -> Result<()> {
        let from = from.to_string();
        self.write(move |c| {
            let state = |id: &str| -> Result<Option<String>> {
                c.query_row("SELECT state FROM master_keys WHERE id = ?1", [id], |r| r.get(0))
                    .optional()
                    .map_err(backend)
            };
            let draining: bool = c
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM master_keys WHERE state = 'draining')",
                    [],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if draining || from == to.id || state(&from)?.as_deref() != Some("active") || state(&to.id)?.is_some() {
                return Err(StoreError::Conflict);
            }
            c.execute("UPDATE master_keys SET state = 'draining' WHERE id = ?1", [&from])
                .map_err(backend)?;
            c.execute(
                "INSERT INTO master_keys (id, state, key_check, created_at) VALUES (?1, 'active', ?2, ?3)",
                params![to.id, to.key_check, ms(to.created_at)],
            )
            .map_err(backend)?;
            write_audit(c, &audit)
        })
        .await
    }

    async fn key_usage(&self) -> Result<Vec<(String, u64)>> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT kek_id, count(*) FROM credentials GROUP BY kek_id ORDER BY kek_id",
            )
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(backend)
        })
        .await
    }

    async fn wrapped_keys(&self, kek_id: &str, limit: usize) -> Result<Vec<WrappedKey>> {
        let kek_id = kek_id.to_string();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT tenant_id, id, kek_id, wrapped_dek FROM credentials WHERE kek_id = ?1 LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![kek_id, limit as i64], |r| {
                    Ok(WrappedKey {
                        tenant_id: r.get(0)?,
                        id: r.get(1)?,
                        kek_id: r.get(2)?,
                        wrapped_dek: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(backend)
        })
        .await
    }

    async fn rewrap(&self, items: Vec<Rewrap>) -> Result<u64> {
        self.write(move |c| {
            let mut changed = 0;
            for item in &items {
                refuse_retired_key(c, &item.to_kek)?;
                changed += c
                    .prepare_cached(
                        "UPDATE credentials SET kek_id = ?3, wrapped_dek = ?4 WHERE id = ?1 AND kek_id = ?2",
                    )
                    .and_then(|mut s| {
                        s.execute(params![item.id, item.from_kek, item.to_kek, item.wrapped_dek])
                    })
                    .map_err(backend)? as u64;
            }
            Ok(changed)
        })
        .await
    }

    async fn retire_key(&self, id: &str, audit: AuditEntry) -> Result<bool> {
        let id = id.to_string();
        self.write(move |c| {
            let used: bool = c
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM credentials WHERE kek_id = ?1)",
                    [&id],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if used {
                return Ok(false);
            }
            let n = c
                .execute(
                    "UPDATE master_keys SET state = 'retired', retired_at = ?2
                     WHERE id = ?1 AND state = 'draining'",
                    params![id, ms(Utc::now())],
                )
                .map_err(backend)?;
            if n == 0 {
                return Ok(false);
            }
            write_audit(c, &audit)?;
            Ok(true)
        })
        .await
    }

    async fn counters(&self, credential: &str) -> Result<Vec<CounterDelta>> {
        self.read_point(move |c| counters(c, credential)).await
    }

    async fn get_credential_with_counters(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(CredentialRecord, Vec<CounterDelta>)>> {
        // One read transaction for both: one snapshot, and one round of
        // the file locks a read transaction takes instead of two.
        self.read_point(move |c| in_snapshot(c, |c| credential_with_counters(c, tenant, id)))
            .await
    }

    async fn find_token_with_credential(
        &self,
        hash: [u8; 32],
        id: &str,
    ) -> Result<Option<TokenWithCredential>> {
        // One statement (the free function of this name), so one snapshot
        // with no BEGIN and COMMIT around it.
        self.read_point(move |c| find_token_with_credential(c, &hash, id))
            .await
    }

    async fn export_snapshot(&self, sink: mpsc::Sender<snapshot::Chunk>) -> Result<()> {
        self.read(move |conn| {
            // One read transaction: every table as of the same moment.
            conn.execute_batch("BEGIN").map_err(backend)?;
            let result = export_tables(conn, &sink);
            let _ = conn.execute_batch("COMMIT");
            result
        })
        .await
    }

    async fn import_snapshot(
        &self,
        source: mpsc::Receiver<snapshot::Chunk>,
    ) -> Result<snapshot::CopyReport> {
        // One write job: it is undone unless every row went in. Its rows
        // stream in once, so the job cannot run a second time: should another
        // job of its batch fail (see `WriteJob`), it answers with its own
        // first failure or, had it succeeded, asks to be run again. (Copies
        // and restores go to a store nothing else writes to.)
        let mut source = Some(source);
        let mut first_failure: Option<StoreError> = None;
        self.write(move |conn| match source.take() {
            Some(source) => import_tables(conn, source).inspect_err(|e| first_failure = Some(e.clone())),
            None => Err(first_failure.clone().unwrap_or_else(|| {
                backend("another write failed in the same transaction as this import; run the import again")
            })),
        })
        .await
    }
}

fn export_tables(conn: &Connection, sink: &mpsc::Sender<snapshot::Chunk>) -> Result<()> {
    use snapshot::{send_blocking, Chunk, BATCH_ROWS, TABLES};
    for (index, table) in TABLES.iter().enumerate() {
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            table.column_list(),
            table.name,
            table.order_by
        );
        let mut statement = conn.prepare(&sql).map_err(backend)?;
        let mut rows = statement.query([]).map_err(backend)?;
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        while let Some(row) = rows.next().map_err(backend)? {
            batch.push(snapshot_row(table, row).map_err(backend)?);
            if batch.len() == BATCH_ROWS {
                let rows = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                if !send_blocking(sink, Chunk::Rows { table: index, rows }) {
                    return Ok(());
                }
            }
        }
        if !batch.is_empty()
            && !send_blocking(
                sink,
                Chunk::Rows {
                    table: index,
                    rows: batch,
                },
            )
        {
            return Ok(());
        }
    }
    send_blocking(sink, Chunk::End);
    Ok(())
}

fn snapshot_row(table: &snapshot::Table, r: &Row) -> rusqlite::Result<Vec<snapshot::Value>> {
    use snapshot::{Kind, Value as V};
    let mut out = Vec::with_capacity(table.columns.len());
    for (i, (_, kind)) in table.columns.iter().enumerate() {
        out.push(match kind {
            Kind::Text => V::Text(r.get(i)?),
            Kind::OptText => r.get::<_, Option<String>>(i)?.map_or(V::Null, V::Text),
            Kind::Bool => V::Bool(r.get(i)?),
            Kind::Int => V::Int(r.get(i)?),
            Kind::Time => V::Time(r.get(i)?),
            Kind::OptTime => r.get::<_, Option<i64>>(i)?.map_or(V::Null, V::Time),
            Kind::Bytes => V::Bytes(r.get(i)?),
            Kind::Json => V::Json(parse_json(r.get(i)?)?),
        });
    }
    Ok(out)
}

fn import_tables(
    conn: &Connection,
    mut source: mpsc::Receiver<snapshot::Chunk>,
) -> Result<snapshot::CopyReport> {
    use snapshot::{check_row, Chunk, Value as V, TABLES};
    for table in TABLES {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", table.name);
        let any: bool = conn.query_row(&sql, [], |r| r.get(0)).map_err(backend)?;
        if any {
            return Err(snapshot::not_empty(table.name));
        }
    }
    let mut report = snapshot::CopyReport::new();
    loop {
        let (index, rows) = match source.blocking_recv() {
            Some(Chunk::Rows { table, rows }) => (table, rows),
            Some(Chunk::End) => {
                // Every name is new here: all go into the name index at the commit.
                conn.execute(
                    "INSERT INTO credentials_fts_pending (seq) SELECT seq FROM credentials",
                    [],
                )
                .map_err(backend)?;
                return Ok(report);
            }
            None => return Err(snapshot::cut_short()),
        };
        let table = TABLES
            .get(index)
            .ok_or_else(|| backend(format!("no table number {index}")))?;
        let placeholders = (1..=table.columns.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({placeholders})",
            table.name,
            table.column_list()
        );
        let mut statement = conn.prepare_cached(&sql).map_err(backend)?;
        for row in &rows {
            check_row(table, row)?;
            let values = row.iter().map(|v| match v {
                V::Null => Value::Null,
                V::Text(s) => Value::Text(s.clone()),
                V::Bool(b) => Value::Integer(i64::from(*b)),
                V::Int(n) | V::Time(n) => Value::Integer(*n),
                V::Bytes(b) => Value::Blob(b.clone()),
                V::Json(j) => Value::Text(j.to_string()),
            });
            statement
                .execute(rusqlite::params_from_iter(values))
                .map_err(|e| backend(format!("{}: {e}", table.name)))?;
        }
        *report.entry(table.name).or_default() += rows.len() as u64;
    }
}

const SERVICE_COLUMNS: &str = "id, tenant_id, name, role, description, integrations, spec, version,
    created_at, created_by, updated_at, updated_by";

fn service_from_row(r: &Row) -> rusqlite::Result<ServiceRecord> {
    Ok(ServiceRecord {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        name: r.get(2)?,
        role: r.get(3)?,
        description: r.get(4)?,
        integrations: parse_json(r.get(5)?)?,
        spec: parse_json(r.get(6)?)?,
        version: r.get(7)?,
        created_at: from_ms(r.get(8)?),
        created_by: r.get(9)?,
        updated_at: from_ms(r.get(10)?),
        updated_by: r.get(11)?,
    })
}

const EVENT_COLUMNS: &str =
    "id, tenant_id, credential_id, kind, valid_request, app_user_id, user_id,
    event_type, delivery_id, payload, received_at";

fn event_from_row(r: &Row) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        credential_id: r.get(2)?,
        kind: r.get(3)?,
        valid_request: r.get(4)?,
        app_user_id: r.get(5)?,
        user_id: r.get(6)?,
        event_type: r.get(7)?,
        delivery_id: r.get(8)?,
        payload: parse_json(r.get(9)?)?,
        received_at: from_ms(r.get(10)?),
    })
}

fn sealed_secrets(c: &Connection, credential: &str) -> Result<Vec<SealedSecret>> {
    let mut s = c
        .prepare_cached(
            "SELECT field, sealed FROM credential_secrets WHERE credential_id = ?1 ORDER BY field",
        )
        .map_err(backend)?;
    let rows = s
        .query_map([credential], |r| {
            Ok(SealedSecret {
                field: r.get(0)?,
                sealed: r.get(1)?,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(backend)?;
    Ok(rows)
}

/// The credentials of a tenant that use a service, as (id, name).
fn credentials_using(c: &Connection, tenant: &str, service: &str) -> Result<Vec<(String, String)>> {
    let mut s = c
        .prepare_cached(
            "SELECT id, name FROM credentials
             WHERE tenant_id = ?1 AND EXISTS (SELECT 1 FROM json_each(services) WHERE value = ?2)
             ORDER BY id",
        )
        .map_err(backend)?;
    let rows = s
        .query_map([tenant, service], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(backend)?;
    Ok(rows)
}

fn service_name_clash(c: &Connection, svc: &ServiceRecord) -> Result<()> {
    let clash: Option<String> = c
        .query_row(
            "SELECT id FROM services WHERE tenant_id = ?1 AND lower(name) = lower(?2) AND id <> ?3",
            params![svc.tenant_id, svc.name, svc.id],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    match clash {
        Some(id) => Err(StoreError::NameTaken(id)),
        None => Ok(()),
    }
}

/// NotFound unless the credential belongs to the tenant.
fn owned_credential(c: &Connection, tenant: &str, credential: &str) -> Result<()> {
    let found: bool = c
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM credentials WHERE tenant_id = ?1 AND id = ?2)",
        )
        .and_then(|mut s| s.query_row([tenant, credential], |r| r.get(0)))
        .map_err(backend)?;
    if found {
        Ok(())
    } else {
        Err(StoreError::NotFound)
    }
}

fn query_credentials(c: &Connection, sql: &str, args: Vec<Value>) -> Result<Vec<CredentialRecord>> {
    let mut s = c.prepare_cached(sql).map_err(backend)?;
    let rows = s
        .query_map(rusqlite::params_from_iter(args), credential_from_row)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(backend)?;
    Ok(rows)
}

/// A search of `q` among the credentials `base` selects (see
/// `list_credentials`; `stretch` as in [`search_window`]); call it inside
/// a read transaction.
fn search(
    c: &Connection,
    base: &str,
    base_args: Vec<Value>,
    q: &str,
    q_integrations: &[String],
    limit: usize,
    stretch: bool,
) -> Result<Page<CredentialRecord>> {
    // A query that matches many names is answered fastest by walking
    // the newest rows in order; one that matches few, by the index.
    if let Some(found) = search_window(c, base, &base_args, q, q_integrations, limit, stretch)? {
        return Ok(page(found, limit, |c| &c.id));
    }
    // No name holds a NUL, and FTS5 would read one as the end of
    // its query: such a query matches by integration only.
    let by_name = !q.contains('\0');
    if by_name && q.chars().count() >= 3 && q_integrations.is_empty() {
        if let Some(hits) = fts_hits_below(c, q, FTS_DRIVES_BELOW)? {
            if hits.is_empty() {
                return Ok(page(Vec::new(), limit, |c: &CredentialRecord| &c.id));
            }
            // Few names match: walk those matches, not the tenant's
            // rows (SQLite keeps no statistics, and would otherwise
            // test a million rows against a handful of hits). The
            // matches just read drive the query: matching the phrase
            // again would cost as much as finding them did.
            let sql = format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM
                   (SELECT value AS hit FROM json_each(?)) f
                 CROSS JOIN credentials c ON c.seq = f.hit
                 WHERE {base} ORDER BY c.id DESC LIMIT ?"
            );
            let hits = serde_json::to_string(&hits).map_err(backend)?;
            let mut args: Vec<Value> = vec![hits.into()];
            args.extend(base_args);
            args.push((limit as i64 + 1).into());
            return Ok(page(query_credentials(c, &sql, args)?, limit, |c| &c.id));
        }
    }
    let mut alternatives = Vec::new();
    let mut args = base_args;
    if by_name && q.chars().count() >= 3 {
        alternatives.push(
            "c.seq IN (SELECT rowid FROM credentials_fts WHERE credentials_fts MATCH ?)"
                .to_string(),
        );
        args.push(fts_phrase(q).into());
    } else if by_name {
        alternatives.push("instr(lower(c.name), ?) > 0".to_string());
        args.push(q.to_lowercase().into());
    }
    if !q_integrations.is_empty() {
        alternatives.push(format!(
            "c.integration_id IN ({})",
            vec!["?"; q_integrations.len()].join(", ")
        ));
        args.extend(q_integrations.iter().map(|i| Value::from(i.clone())));
    }
    if alternatives.is_empty() {
        return Ok(page(Vec::new(), limit, |c: &CredentialRecord| &c.id));
    }
    let sql = format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM credentials c WHERE {base} AND ({}) ORDER BY c.id DESC LIMIT ?",
        alternatives.join(" OR ")
    );
    args.push((limit as i64 + 1).into());
    Ok(page(query_credentials(c, &sql, args)?, limit, |c| &c.id))
}

/// Below this many full-text matches a search is driven by the matches.
const FTS_DRIVES_BELOW: usize = 2000;

/// The rowids of the name index's matches of `q` (any tenant) when there
/// are fewer than `n`; `None` when there are `n` or more.
fn fts_hits_below(c: &Connection, q: &str, n: usize) -> Result<Option<Vec<i64>>> {
    let hits = c
        .prepare_cached("SELECT rowid FROM credentials_fts WHERE credentials_fts MATCH ?1 LIMIT ?2")
        .and_then(|mut s| {
            s.query_map(params![fts_phrase(q), n as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<i64>>>()
        })
        .map_err(backend)?;
    Ok((hits.len() < n).then_some(hits))
}

/// Walks the newest rows (names and integrations only, from a covering
/// index, not the table: see migration 0007) for matches: the first
/// `SEARCH_WINDOW`, and, if `stretch`, on while [`crate::next_window`]
/// expects a page within reach. Answers the page when the walk found a full
/// page of matches or reached the end of the list; `None` when the index
/// must decide. The rows are stepped one by one, so the walk reads only as
/// far as it goes.
fn search_window(
    c: &Connection,
    base: &str,
    base_args: &[Value],
    q: &str,
    q_integrations: &[String],
    limit: usize,
    stretch: bool,
) -> Result<Option<Vec<CredentialRecord>>> {
    let needle = q.to_lowercase();
    let sql = format!(
        "SELECT c.seq, c.name, c.integration_id FROM credentials c WHERE {base} ORDER BY c.id DESC LIMIT ?"
    );
    let mut args = base_args.to_vec();
    // One row past the stretch: a walk that reaches it must still see that
    // the list goes on (and ask the index), not take the LIMIT for its end.
    args.push((SEARCH_STRETCH + 1).into());
    let mut s = c.prepare_cached(&sql).map_err(backend)?;
    let mut rows = s.query(rusqlite::params_from_iter(args)).map_err(backend)?;
    let (mut seen, mut hits, mut reach) = (0i64, Vec::new(), SEARCH_WINDOW);
    while let Some(r) = rows.next().map_err(backend)? {
        if seen == reach {
            match crate::next_window(hits.len(), seen, limit).filter(|_| stretch) {
                Some(more) => reach += more,
                None => return Ok(None),
            }
        }
        seen += 1;
        let name = r
            .get_ref(1)
            .and_then(|v| Ok(v.as_str()?))
            .map_err(backend)?;
        let integration = r
            .get_ref(2)
            .and_then(|v| Ok(v.as_str()?))
            .map_err(backend)?;
        if contains_lowercase(name, &needle) || q_integrations.iter().any(|i| i == integration) {
            hits.push(r.get::<_, i64>(0).map_err(backend)?);
            if hits.len() > limit {
                break;
            }
        }
    }
    if hits.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let sql = format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE seq IN ({}) ORDER BY id DESC",
        vec!["?"; hits.len()].join(", ")
    );
    query_credentials(c, &sql, hits.into_iter().map(Value::from).collect()).map(Some)
}

/// Whether `hay`, lowercased, contains `needle`, which the caller has
/// lowercased, without lowercasing a copy of an ASCII `hay`.
fn contains_lowercase(hay: &str, needle: &str) -> bool {
    debug_assert_eq!(needle, needle.to_lowercase(), "a lowercased needle");
    if hay.is_ascii() {
        let n = needle.as_bytes();
        n.is_empty()
            || hay
                .as_bytes()
                .windows(n.len())
                .any(|w| w.eq_ignore_ascii_case(n))
    } else {
        hay.to_lowercase().contains(needle)
    }
}

fn insert_token(c: &Connection, t: &TokenRecord) -> Result<()> {
    c.execute(
        "INSERT INTO tokens (id, tenant_id, name, role, hash, created_at, created_by, revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            t.id,
            t.tenant_id,
            t.name,
            t.role,
            t.hash.as_slice(),
            ms(t.created_at),
            t.created_by,
            t.revoked_at.map(ms)
        ],
    )
    .map_err(backend)?;
    Ok(())
}

/// A credential's stored ingress counters: a range of the counters' key.
fn counters(c: &Connection, credential: &str) -> Result<Vec<CounterDelta>> {
    let mut s = c
        .prepare_cached(
            "SELECT credential_id, kind, outcome, count FROM ingress_counters
             WHERE credential_id = ?1 ORDER BY kind, outcome",
        )
        .map_err(backend)?;
    s.query_map([credential], |r| {
        Ok(CounterDelta {
            credential_id: r.get(0)?,
            kind: r.get(1)?,
            outcome: r.get(2)?,
            count: r.get::<_, i64>(3)? as u64,
        })
    })
    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
    .map_err(backend)
}

/// The live token with this hash, and its tenant.
fn find_token(c: &Connection, hash: &[u8; 32]) -> Result<Option<(TokenRecord, TenantRecord)>> {
    c.prepare_cached(
        "SELECT k.id, k.tenant_id, k.name, k.role, k.hash, k.created_at, k.created_by, k.revoked_at,
                t.id, t.name, t.is_operator, t.created_at
         FROM tokens k JOIN tenants t ON t.id = k.tenant_id
         WHERE k.hash = ?1 AND k.revoked_at IS NULL",
    )
    .and_then(|mut s| {
        s.query_row([hash.as_slice()], |r| {
            Ok((token_from_row(r, 0)?, tenant_from_row(r, 8)?))
        })
        .optional()
    })
    .map_err(backend)
}

/// The live token with this hash, its tenant, and the tenant's credential
/// `id` with its stored counters, in one statement: one row per counter (or
/// one row, its counter columns NULL, for a credential without counters or
/// no credential), the token, tenant and credential repeated on each. A
/// statement reads one snapshot, so it needs no transaction around it, and
/// a get costs one statement's lookup in the cache and reset, and its
/// steps, rather than three statements' plus a BEGIN and a COMMIT.
fn find_token_with_credential(
    c: &Connection,
    hash: &[u8; 32],
    id: &str,
) -> Result<Option<TokenWithCredential>> {
    const SQL: &str =
        "SELECT c.id, c.tenant_id, c.name, c.description, c.integration_id, c.auth_type,
                c.services, c.scopes, c.params, c.secret_fields, c.status, c.status_message,
                c.checked_at, c.version, c.kek_id, c.wrapped_dek, c.created_at, c.created_by,
                c.updated_at, c.updated_by,
                k.id, k.tenant_id, k.name, k.role, k.hash, k.created_at, k.created_by, k.revoked_at,
                t.id, t.name, t.is_operator, t.created_at,
                i.kind, i.outcome, i.count
         FROM tokens k JOIN tenants t ON t.id = k.tenant_id
         LEFT JOIN credentials c ON c.tenant_id = k.tenant_id AND c.id = ?2
         LEFT JOIN ingress_counters i ON i.credential_id = c.id
         WHERE k.hash = ?1 AND k.revoked_at IS NULL";
    // The columns of each part, in the order of the statement.
    const TOKEN: usize = 20;
    const TENANT: usize = 28;
    const COUNTER: usize = 32;
    let mut s = c.prepare_cached(SQL).map_err(backend)?;
    let mut rows = s.query(params![hash.as_slice(), id]).map_err(backend)?;
    let Some(first) = rows.next().map_err(backend)? else {
        return Ok(None);
    };
    let counter = |r: &Row, credential: &str| -> rusqlite::Result<Option<CounterDelta>> {
        let Some(kind) = r.get::<_, Option<String>>(COUNTER)? else {
            return Ok(None);
        };
        Ok(Some(CounterDelta {
            credential_id: credential.to_string(),
            kind,
            outcome: r.get(COUNTER + 1)?,
            count: r.get::<_, i64>(COUNTER + 2)? as u64,
        }))
    };
    let token = token_from_row(first, TOKEN).map_err(backend)?;
    let tenant = tenant_from_row(first, TENANT).map_err(backend)?;
    let credential = match first.get_ref(0).map_err(backend)? {
        rusqlite::types::ValueRef::Null => None,
        _ => {
            let record = credential_from_row(first).map_err(backend)?;
            let mut counters: Vec<CounterDelta> = counter(first, &record.id)
                .map_err(backend)?
                .into_iter()
                .collect();
            while let Some(r) = rows.next().map_err(backend)? {
                counters.extend(counter(r, &record.id).map_err(backend)?);
            }
            // In the order `counters` reads them (the key's order).
            counters.sort_by(|a, b| (&a.kind, &a.outcome).cmp(&(&b.kind, &b.outcome)));
            Some((record, counters))
        }
    };
    Ok(Some(TokenWithCredential {
        token,
        tenant,
        credential,
    }))
}

/// A credential and its stored counters; call it inside a read
/// transaction, so both are of one snapshot.
fn credential_with_counters(
    c: &Connection,
    tenant: &str,
    id: &str,
) -> Result<Option<(CredentialRecord, Vec<CounterDelta>)>> {
    match get_credential(c, tenant, id)? {
        Some(rec) => Ok(Some((rec, counters(c, id)?))),
        None => Ok(None),
    }
}

fn get_credential(c: &Connection, tenant: &str, id: &str) -> Result<Option<CredentialRecord>> {
    c.prepare_cached(&format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant_id = ?1 AND id = ?2"
    ))
    .and_then(|mut s| {
        s.query_row(params![tenant, id], credential_from_row)
            .optional()
    })
    .map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled SQLite is built with `.cargo/config.toml`'s flags: no
    /// page cache shared by every connection behind one mutex, and no
    /// memory statistics behind another (a build run from outside the
    /// workspace would miss that file).
    #[test]
    fn the_bundled_sqlite_has_no_process_wide_page_cache_or_memory_statistics() {
        let conn = Connection::open_in_memory().unwrap();
        let mut stmt = conn.prepare("PRAGMA compile_options").unwrap();
        let options: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
    }

    /// A write transaction an earlier batch left open (its ROLLBACK failed)
    /// is rolled back before the next batch begins, instead of failing that
    /// BEGIN and every one after it.
    #[test]
    fn a_batch_after_a_transaction_left_open_rolls_it_back_and_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("w.db"), false).unwrap();
        migrate(&mut conn).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (v TEXT); BEGIN IMMEDIATE; INSERT INTO t VALUES ('failed batch');",
        )
        .unwrap();
        assert!(
            !conn.is_autocommit(),
            "the earlier batch's transaction is open"
        );
        let (done, answer) = oneshot::channel();
        let mut batch: Vec<Job> = vec![Box::new(Pending {
            work: |c: &Connection| {
                c.execute("INSERT INTO t VALUES ('next batch')", [])
                    .map(|_| ())
                    .map_err(backend)
            },
            result: None,
            done,
        })];
        commit_batch(&conn, &mut batch).expect("the next batch commits");
        for job in batch {
            job.finish(Ok(()));
        }
        answer.blocking_recv().unwrap().expect("its job succeeded");
        assert!(conn.is_autocommit());
        let rows: Vec<String> = conn
            .prepare("SELECT v FROM t")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(rows, ["next batch"], "the failed batch's row is gone");
    }

    /// A closed store is one file: its WAL is checkpointed and removed,
    /// whichever connection was used last, every time.
    #[tokio::test]
    async fn a_closed_store_leaves_only_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.db");
        for round in 0..20u8 {
            let store = SqliteStore::open(&path).unwrap();
            let key = format!("k{round}");
            assert!(store.meta_put_if_absent(&key, vec![round]).await.unwrap());
            assert_eq!(store.meta_get(&key).await.unwrap(), Some(vec![round]));
            tokio::task::spawn_blocking(move || store.close())
                .await
                .unwrap()
                .unwrap();
            let files: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(files, ["one.db"], "round {round}");
        }
    }

    /// How many of the rows `k…` the database file holds by itself, its
    /// WAL left out: what a checkpoint has copied in. `None` while a copy
    /// taken mid-checkpoint cannot be read.
    fn rows_in_the_file_alone(path: &Path) -> Option<i64> {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy.db");
        std::fs::copy(path, &copy).ok()?;
        let conn = Connection::open(&copy).ok()?;
        conn.query_row("SELECT count(*) FROM meta WHERE key LIKE 'k%'", [], |r| {
            r.get(0)
        })
        .ok()
    }

    async fn write_rows(store: &SqliteStore, n: u8) {
        for i in 0..n {
            let key = format!("k{i}");
            assert!(store.meta_put_if_absent(&key, vec![i; 3000]).await.unwrap());
        }
    }

    /// The checkpointer copies what the writer commits into the database
    /// file while the store stays open, the writer's own rule set far off.
    #[tokio::test]
    async fn the_checkpointer_copies_the_wal_into_the_file_while_the_store_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let rule = Checkpoints {
            every: Duration::from_millis(5),
            writer_after_pages: 1_000_000,
        };
        let store = SqliteStore::open_with(&path, rule).unwrap();
        let own: i64 = store
            .write(|c| {
                c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
                    .map_err(backend)
            })
            .await
            .unwrap();
        assert_eq!(own, 1_000_000, "the writer's own checkpoints");
        write_rows(&store, 50).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rows = rows_in_the_file_alone(&path);
            if rows == Some(50) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the database file alone holds {rows:?} of the 50 rows"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::task::spawn_blocking(move || store.close())
            .await
            .unwrap()
            .unwrap();
    }

    /// At `writer_after_pages`, the writer checkpoints in its commit,
    /// before answering: the backstop for writes that never pause (and for
    /// a checkpointer whose checkpoints fail), here with a checkpointer that
    /// would wait an hour.
    #[tokio::test]
    async fn past_its_limit_the_writer_checkpoints_the_wal_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let rule = Checkpoints {
            every: Duration::from_secs(3600),
            writer_after_pages: 8,
        };
        let store = SqliteStore::open_with(&path, rule).unwrap();
        write_rows(&store, 50).await;
        // All but the rows committed since the last time the WAL reached
        // its limit (a row is a page or two; the limit, eight).
        let rows = rows_in_the_file_alone(&path).unwrap();
        assert!((42..=50).contains(&rows), "{rows} of the 50 rows");
        tokio::task::spawn_blocking(move || store.close())
            .await
            .unwrap()
            .unwrap();
    }

    /// The query plan's steps, outer loop first.
    fn plan(c: &Connection, sql: &str) -> Vec<String> {
        let mut s = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        s.query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    fn migrated() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c).unwrap();
        c
    }

    #[test]
    fn queued_names_are_indexed_from_the_queue_not_a_scan_of_the_credentials() {
        let steps = plan(&migrated(), INDEX_QUEUED_NAMES_SQL);
        assert!(steps[0].starts_with("SCAN p"), "{steps:?}");
        assert!(
            steps[1].contains("c USING INTEGER PRIMARY KEY"),
            "{steps:?}"
        );
    }

    #[test]
    fn a_search_walks_names_from_the_index_not_the_table() {
        let steps = plan(
            &migrated(),
            "SELECT c.seq, c.name, c.integration_id FROM credentials c
             WHERE c.tenant_id = 't' ORDER BY c.id DESC LIMIT 10",
        );
        assert_eq!(
            steps,
            ["SEARCH c USING COVERING INDEX credentials_tenant_names (tenant_id=?)"]
        );
    }

    #[test]
    fn a_walk_that_reaches_the_stretch_asks_the_index_rather_than_end_the_page() {
        // 50 matches in the newest 2,000 rows promise the 51st within reach,
        // window after window, up to exactly SEARCH_STRETCH rows; the 51st
        // is older. The walk must then ask the index, not answer 50 rows as
        // if the list had ended there.
        let mut c = migrated();
        // No tenant or key rows: this is about the walk alone.
        c.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        let tx = c.transaction().unwrap();
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO credentials (id, tenant_id, name, description, integration_id,
                        auth_type, services, scopes, params, secret_fields, status, version,
                        kek_id, wrapped_dek, created_at, created_by, updated_at, updated_by)
                     VALUES (?1, 't', ?2, '', 'github', 'api_key', '{}', '[]', '{}', '[]',
                        'unchecked', 1, 'kek', x'00', 0, 'a', 0, 'a')",
                )
                .unwrap();
            let older_match = SEARCH_STRETCH as u32 + 50;
            for age in 0..SEARCH_STRETCH as u32 + 100 {
                let matches = age < 50 || age == older_match;
                let name = if matches { "needle" } else { "hay" };
                insert
                    .execute(params![
                        format!("cred_{:08}", 99_999_999 - age),
                        format!("{name} {age}")
                    ])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
        let base_args = [Value::from("t".to_string())];
        let walked =
            search_window(&c, "c.tenant_id = ?", &base_args, "needle", &[], 50, true).unwrap();
        assert!(
            walked.is_none(),
            "answered {:?} rows",
            walked.map(|w| w.len())
        );
        // Without the stretch, the first window already asks the index.
        let first =
            search_window(&c, "c.tenant_id = ?", &base_args, "needle", &[], 50, false).unwrap();
        assert!(first.is_none());
        // A page found within reach is answered from the walk.
        let page = search_window(&c, "c.tenant_id = ?", &base_args, "needle", &[], 20, true)
            .unwrap()
            .expect("a page in the newest rows");
        assert_eq!(page.len(), 21, "the page and one more, for the cursor");
    }

    #[test]
    fn a_filtered_search_walks_its_filters_covering_index() {
        let walk = |filter: &str| {
            plan(
                &migrated(),
                &format!(
                    "SELECT c.seq, c.name, c.integration_id FROM credentials c
                     WHERE c.tenant_id = 't' {filter} ORDER BY c.id DESC LIMIT 10"
                ),
            )
        };
        assert_eq!(
            walk("AND c.integration_id = 'stripe' AND c.id < 'x'"),
            ["SEARCH c USING COVERING INDEX credentials_integration (tenant_id=? AND integration_id=? AND id<?)"]
        );
        assert_eq!(
            walk("AND c.status = 'valid'"),
            ["SEARCH c USING COVERING INDEX credentials_status (tenant_id=? AND status=?)"]
        );
        assert_eq!(
            walk("AND c.status = 'valid' AND c.integration_id = 'stripe'"),
            ["SEARCH c USING COVERING INDEX credentials_status (tenant_id=? AND status=?)"]
        );
    }

    #[test]
    fn a_name_clash_is_looked_up_by_the_name_not_a_walk_of_the_tenant() {
        let steps = plan(
            &migrated(),
            "SELECT id FROM credentials WHERE tenant_id = 't' AND lower(name) = lower('n') AND id <> 'x'",
        );
        assert_eq!(
            steps,
            ["SEARCH credentials USING INDEX credentials_name (tenant_id=? AND <expr>=?)"]
        );
    }

    #[test]
    fn a_search_matches_names_whatever_their_case() {
        assert!(contains_lowercase("Acmex Billing 0000001", "mex bill"));
        assert!(contains_lowercase("ACMEX", "acmex"));
        assert!(!contains_lowercase("Acmex", "acmexx"));
        assert!(contains_lowercase("Acmex", ""));
        // Not ASCII: lowercased as Unicode says.
        assert!(contains_lowercase("ÜBER Straße", "über st"));
        assert!(!contains_lowercase("ÜBER", "uber"));
        // A needle with letters an ASCII name cannot hold.
        assert!(!contains_lowercase("uber", "über"));
    }

    #[test]
    fn a_reader_goes_back_to_the_pool_outside_any_transaction() {
        let pool = Mutex::new(vec![Connection::open_in_memory().unwrap()]);
        {
            let reader = Reader::take(&pool);
            reader.conn().execute_batch("BEGIN").unwrap();
            assert!(!reader.conn().is_autocommit());
        }
        let reader = Reader::take(&pool);
        assert!(reader.conn().is_autocommit(), "the open read was ended");
        drop(reader);
        assert_eq!(pool.lock().unwrap().len(), 1, "and the connection kept");
    }
}
