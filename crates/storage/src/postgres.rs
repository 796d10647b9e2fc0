//! The PostgreSQL backend: the same contract as the SQLite one, record for
//! record and error for error, over a pool of `tokio-postgres` connections.
//!
//! It owns the schema in `migrations/postgres/` (applied by
//! [`PostgresStore::connect`] under a transaction-level advisory lock, so
//! replicas starting together do not race, and tracked in
//! `schema_migrations`), and one transaction per mutation, holding the
//! mutation's audit entry. It must not know HTTP or see a secret in the
//! clear. Most mutations commit on their own pooled connection, and
//! PostgreSQL groups the commits that arrive together into shared WAL
//! flushes. The two hot writes, ingress events and credential creates, are
//! group-committed here as well: a writer task takes whatever is queued and
//! writes it with one statement, since PostgreSQL spends more on a statement
//! and its commit than on a row (ingress's writers keep one pooled
//! connection for themselves, their statements pipelined on it). With
//! `synchronous_commit` on (the default)
//! a mutation returns only once its commit is durable.
//!
//! Transactions run at READ COMMITTED. Where SQLite's single writer makes a
//! check-then-write atomic, this backend takes a lock first: the row
//! (`FOR UPDATE`) before a version check, and a transaction-level advisory
//! lock on (tenant, lower-cased name) before a name-uniqueness check, so two
//! writers of one name queue and the second sees the first's row (and answers
//! [`StoreError::NameTaken`] with its id), as with SQLite.
//!
//! [`PostgresStore::connect_in_schema`] keeps every table in one schema (set
//! as `search_path` on every pooled connection), so several installations,
//! or tests, can share a database. The server needs the `pg_trgm` extension
//! (PostgreSQL's contrib); the first migration installs it in `public` unless
//! it is installed already. Connections are plain TCP or socket (`NoTls`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio::sync::{mpsc, oneshot, Mutex, Notify};
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{NoTls, Row};

use crate::*;

/// The migrations by version, in the order they apply.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../migrations/postgres/0002_services_events.sql"),
    ),
    (3, include_str!("../migrations/postgres/0003_sessions.sql")),
    (
        4,
        include_str!("../migrations/postgres/0004_master_keys.sql"),
    ),
    (
        5,
        include_str!("../migrations/postgres/0005_search_scan_index.sql"),
    ),
    (
        6,
        include_str!("../migrations/postgres/0006_events_lean_indexes.sql"),
    ),
];

/// Key of the advisory lock held while migrating ("latchkey" in ASCII).
/// Advisory locks are per database, so this serialises the migrations of
/// every schema of the database (which also keeps their shared
/// `CREATE EXTENSION` from racing).
const MIGRATION_LOCK: i64 = 0x6c61_7463_686b_6579;

/// How long connecting may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which kind of name an advisory lock guards: the first key of the two-key
/// advisory lock, a key space apart from the migration lock's.
#[derive(Debug, Clone, Copy)]
enum NameLock {
    Tenant = 1,
    Credential = 2,
    Service = 3,
}

/// Most events one group commit of ingress takes.
const EVENT_BATCH: usize = 512;
/// Group commits of ingress in flight at once, pipelined on one connection
/// ([`event_writer`]): PostgreSQL starts the next batch's statement as soon
/// as it has committed the last one, rather than after a round trip through
/// this process. On separate connections the two would run at once and
/// contend for the same index pages and the same cores.
const EVENT_WRITERS: usize = 2;
/// While one batch is in flight, the next is sent once it holds this many
/// events (or the first has returned): PostgreSQL spends about as much on
/// binding, starting and committing the statement as on a dozen of its
/// rows, so a second statement is worth sending only for enough rows.
const EVENT_OVERLAP: usize = 16;

type EventJob = (NewEvent, oneshot::Sender<Result<EventStored>>);

pub struct PostgresStore {
    pool: Pool,
    schema: Option<String>,
    /// The ingress group-commit queue, started on first use (a store can be
    /// built outside the runtime, e.g. for `migrate status`).
    events: OnceLock<mpsc::Sender<EventJob>>,
    /// The group-commit queue of creates, started on first use.
    creates: OnceLock<mpsc::Sender<CreateJob>>,
}

/// A driver error with the server's message (the driver's own `Display`
/// says only "db error").
fn pg(e: tokio_postgres::Error) -> StoreError {
    backend(&e)
}

fn backend(e: &dyn std::error::Error) -> StoreError {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !message.contains(&part) {
            message.push_str(": ");
            message.push_str(&part);
        }
        source = s.source();
    }
    StoreError::Backend(message)
}

/// Whole milliseconds, as the SQLite backend keeps times.
fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// A schema name that needs no quoting anywhere (search_path, DDL, options).
fn check_schema_name(schema: &str) -> Result<()> {
    let mut chars = schema.chars();
    let valid = schema.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(StoreError::Backend(format!(
            "invalid schema name {schema:?}: use lowercase letters, digits and _"
        )))
    }
}

/// Escapes `LIKE`'s wildcards and its escape character (`\`, the default).
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl PostgresStore {
    /// Most connections a replica's pool opens unless told otherwise
    /// ([`PostgresStore::open_unmigrated_with_pool`]).
    pub const DEFAULT_POOL_SIZE: usize = 16;

    /// The smallest pool that works: the ingress writers keep one
    /// connection for good, and every other call needs another.
    pub const MIN_POOL_SIZE: usize = 2;

    /// Connects and applies the migrations that are not yet applied.
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        let store = Self::open_unmigrated(url, None)?;
        store.migrate().await?;
        Ok(store)
    }

    /// Like [`PostgresStore::connect`], with every table in `schema` (created
    /// if missing), which becomes the `search_path` of every connection.
    pub async fn connect_in_schema(url: &str, schema: &str) -> Result<PostgresStore> {
        let store = Self::open_unmigrated(url, Some(schema))?;
        store.migrate().await?;
        Ok(store)
    }

    /// A store that applies no migrations and connects on first use: for
    /// [`PostgresStore::migration_status`] without changing anything. Its
    /// other methods need the schema that [`PostgresStore::migrate`] makes.
    pub fn open_unmigrated(url: &str, schema: Option<&str>) -> Result<PostgresStore> {
        Self::open_unmigrated_with_pool(url, schema, Self::DEFAULT_POOL_SIZE)
    }

    /// [`PostgresStore::open_unmigrated`] with at most `pool_size`
    /// connections (at least [`PostgresStore::MIN_POOL_SIZE`]). Each replica
    /// opens its own pool, so replicas × `pool_size` must stay under the
    /// server's `max_connections`.
    pub fn open_unmigrated_with_pool(
        url: &str,
        schema: Option<&str>,
        pool_size: usize,
    ) -> Result<PostgresStore> {
        let mut config: tokio_postgres::Config = url.parse().map_err(pg)?;
        if let Some(schema) = schema {
            check_schema_name(schema)?;
            let option = format!("-c search_path={schema}");
            let options = match config.get_options() {
                Some(given) => format!("{given} {option}"),
                None => option,
            };
            config.options(options);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("latchkey");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(Self::MIN_POOL_SIZE))
            .build()
            .map_err(|e| backend(&e))?;
        Ok(PostgresStore {
            pool,
            schema: schema.map(str::to_string),
            events: OnceLock::new(),
            creates: OnceLock::new(),
        })
    }

    /// Applies the migrations not yet applied, in one transaction under the
    /// migration lock; returns the versions it applied.
    pub async fn migrate(&self) -> Result<Vec<i32>> {
        self.migrate_to(i32::MAX).await
    }

    /// [`PostgresStore::migrate`], but only as far as version `last`: for
    /// tests of an upgrade from an older schema.
    #[doc(hidden)]
    pub async fn migrate_to(&self, last: i32) -> Result<Vec<i32>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        if let Some(schema) = &self.schema {
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .map_err(pg)?;
        }
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INT PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL
             )",
        )
        .await
        .map_err(pg)?;
        let applied = applied_versions(&tx).await?;
        let mut done = Vec::new();
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) || *version > last {
                continue;
            }
            tx.batch_execute(sql).await.map_err(|e| match pg(e) {
                StoreError::Backend(m) => {
                    StoreError::Backend(format!("migration {version} failed: {m}"))
                }
                other => other,
            })?;
            exec(
                &tx,
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())",
                &[version],
            )
            .await?;
            done.push(*version);
        }
        tx.commit().await.map_err(pg)?;
        Ok(done)
    }

    /// Every migration this build knows, and whether it is applied; versions
    /// applied by a newer build show too, as applied.
    pub async fn migration_status(&self) -> Result<Vec<(i32, bool)>> {
        let client = self.client().await?;
        let tracked: bool = client
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg)?;
        let applied = if tracked {
            applied_versions(&client).await?
        } else {
            Vec::new()
        };
        let mut status: Vec<(i32, bool)> = MIGRATIONS
            .iter()
            .map(|(v, _)| (*v, applied.contains(v)))
            .collect();
        for v in applied {
            if !MIGRATIONS.iter().any(|(known, _)| *known == v) {
                status.push((v, true));
            }
        }
        status.sort_unstable();
        Ok(status)
    }

    /// Creates several credentials with one statement, as the group commit
    /// behind [`Store::insert_credential`] does for creates that arrive
    /// together, and answers each as that method would have. `Err` when the
    /// statement itself failed, storing none of them (the group commit then
    /// tries each alone).
    pub async fn insert_credentials(
        &self,
        items: Vec<(CredentialRecord, Vec<SealedSecret>, AuditEntry)>,
    ) -> Result<Vec<Result<()>>> {
        let items: Vec<_> = items
            .iter()
            .map(|(rec, secrets, audit)| (rec, secrets.as_slice(), audit))
            .collect();
        let client = self.client().await?;
        let answers = group_answers(&client, &items).await?;
        let mut out = Vec::with_capacity(items.len());
        for ((rec, secrets, audit), answer) in items.iter().zip(answers) {
            out.push(match answer {
                Some(outcome) => outcome,
                None => insert_credential(&client, rec, secrets, Some(audit)).await,
            });
        }
        Ok(out)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(|e| backend(&e))
    }
}

async fn applied_versions(c: &impl GenericClient) -> Result<Vec<i32>> {
    rows(c, "SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()
        .map_err(pg)
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

async fn exec(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<u64> {
    let s = c.prepare_cached(sql).await.map_err(pg)?;
    c.execute(&s, params).await.map_err(pg)
}

/// The tables whose rows carry a version for optimistic concurrency.
enum Versioned {
    Credential,
    Service,
}

/// Locks the row for the rest of the transaction and checks its version:
/// NotFound, or VersionMismatch with the current version.
async fn lock_version(
    c: &impl GenericClient,
    table: Versioned,
    tenant: &str,
    id: &str,
    expected: i64,
) -> Result<()> {
    let sql = match table {
        Versioned::Credential => {
            "SELECT version FROM credentials WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
        }
        Versioned::Service => {
            "SELECT version FROM services WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
        }
    };
    let current = row(c, sql, &[&tenant, &id]).await?;
    match current
        .map(|r| r.try_get::<_, i64>(0))
        .transpose()
        .map_err(pg)?
    {
        None => Err(StoreError::NotFound),
        Some(v) if v != expected => Err(StoreError::VersionMismatch { current: v }),
        Some(_) => Ok(()),
    }
}

async fn rows(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
    let s = c.prepare_cached(sql).await.map_err(pg)?;
    c.query(&s, params).await.map_err(pg)
}

async fn row(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<Option<Row>> {
    let s = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_opt(&s, params).await.map_err(pg)
}

/// Maps every row, failing on the first that does not convert.
fn map_rows<T>(
    rows: &[Row],
    f: impl Fn(&Row) -> std::result::Result<T, tokio_postgres::Error>,
) -> Result<Vec<T>> {
    rows.iter()
        .map(f)
        .collect::<std::result::Result<_, _>>()
        .map_err(pg)
}

/// The parameters of a statement built at run time.
#[derive(Default)]
struct Args(Vec<Box<dyn ToSql + Sync + Send>>);

impl Args {
    /// Adds a parameter; returns its placeholder.
    fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(value));
        format!("${}", self.0.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect()
    }
}

/// Inserts a credential, its sealed secrets and (for one create) its audit
/// entry, in one statement ([`INSERT_CREDENTIAL_SQL`]); outside a
/// transaction that statement is its own, so a create is one round trip and
/// one commit. The server spends about as much on each statement as on a
/// small write (parse, execute, an answer the client wakes up for), so one
/// statement for the checks and writes together, rather than one per check
/// and write, is what lets creates keep up with the disk's commits.
///
/// The statement inserts nothing when the master key is retired or the name
/// is taken (case-insensitively, in the tenant), and answers which. For a
/// taken name the existing credential's id is read next; should that
/// credential be gone by then, the insert is tried again.
async fn insert_credential(
    c: &impl GenericClient,
    rec: &CredentialRecord,
    secrets: &[SealedSecret],
    audit: Option<&AuditEntry>,
) -> Result<()> {
    let insert = c.prepare_cached(INSERT_CREDENTIAL_SQL).await.map_err(pg)?;
    let (services, scopes, params, fields) = (
        Json(&rec.services),
        Json(&rec.scopes),
        Json(&rec.params),
        Json(&rec.secret_fields),
    );
    let (checked_at, created_at, updated_at) = (
        rec.checked_at.map(ms),
        ms(rec.created_at),
        ms(rec.updated_at),
    );
    // One row per field, the last given winning, as `put_secrets` (an
    // upsert) and SQLite do: one INSERT cannot write a key twice.
    let mut last = BTreeMap::new();
    for s in secrets {
        last.insert(s.field.as_str(), s.sealed.as_slice());
    }
    let (secret_fields, sealed): (Vec<&str>, Vec<&[u8]>) = last.into_iter().unzip();
    let kind = NameLock::Credential as i32;
    let audit_at = audit.map(|a| ms(a.at));
    let log = audit.is_some();
    // Without an audit entry its parameters are NULLs, unused.
    let none: Option<&str> = None;
    let no_details: Option<Json<()>> = None;
    let audit_params: [&(dyn ToSql + Sync); 10] = match (audit, &audit_at) {
        (Some(a), Some(at)) => audit_row(a, at),
        _ => [
            &none,
            &none,
            &none,
            &none,
            &none,
            &none,
            &none,
            &audit_at,
            &none,
            &no_details,
        ],
    };
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        &rec.id,
        &rec.tenant_id,
        &rec.name,
        &rec.description,
        &rec.integration_id,
        &rec.auth_type,
        &services,
        &scopes,
        &params,
        &fields,
        &rec.status,
        &rec.status_message,
        &checked_at,
        &rec.version,
        &rec.kek_id,
        &rec.wrapped_dek,
        &created_at,
        &rec.created_by,
        &updated_at,
        &rec.updated_by,
        &secret_fields,
        &sealed,
        &kind,
        &log,
    ];
    params.extend_from_slice(&audit_params);
    for _ in 0..3 {
        let r = c.query_one(&insert, &params).await.map_err(pg)?;
        let key_state: Option<&str> = r.try_get(0).map_err(pg)?;
        if key_state == Some("retired") {
            return Err(StoreError::KeyRetired(rec.kek_id.clone()));
        }
        if r.try_get::<_, bool>(1).map_err(pg)? {
            return Ok(());
        }
        name_clash_row(row(c, NAME_CLASH_SQL, &[&rec.tenant_id, &rec.name, &rec.id]).await?)?;
    }
    Err(StoreError::Conflict)
}

/// One create, checks and writes ([`insert_credential`]):
///
/// - `k` share-locks the master key's row ([`RETIRED_KEY_SQL`]). A locking
///   read answers the row's newest version, waiting for a writer of it, so
///   a key retired before this statement took the lock is seen retired.
///   `retire_key` updates that row first, so it waits for this transaction
///   and then finds its credential.
/// - `l` queues behind any other transaction checking or writing the same
///   name ([`LOCK_NAME_SQL`]), so a rename's check after that lock sees
///   this row.
/// - `ON CONFLICT ... DO NOTHING` on the unique name index settles a clash
///   with a row whose writer has not committed yet by waiting for it.
const INSERT_CREDENTIAL_SQL: &str = "WITH k AS (
        SELECT state FROM master_keys WHERE id = $15::text FOR SHARE
     ),
     l AS (
         SELECT pg_advisory_xact_lock($23::int4,
             hashtext($2::text || '/' || lower($3::text COLLATE \"C\")))
     ),
     c AS (
         INSERT INTO credentials (id, tenant_id, name, description, integration_id, auth_type,
             services, scopes, params, secret_fields, status, status_message, checked_at, version,
             kek_id, wrapped_dek, created_at, created_by, updated_at, updated_by)
         SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::jsonb, $8::jsonb,
             $9::jsonb, $10::jsonb, $11::text, $12::text, $13::timestamptz, $14::bigint, $15::text,
             $16::bytea, $17::timestamptz, $18::text, $19::timestamptz, $20::text
         FROM l
         WHERE NOT EXISTS (SELECT 1 FROM k WHERE k.state = 'retired')
         ON CONFLICT (tenant_id, lower(name COLLATE \"C\")) DO NOTHING
         RETURNING id
     ),
     s AS (
         INSERT INTO credential_secrets (credential_id, field, sealed)
         SELECT c.id, f.field, f.sealed FROM c, unnest($21::text[], $22::bytea[]) AS f (field, sealed)
     ),
     a AS (
         INSERT INTO audit (id, tenant_id, actor_id, actor_name, action, target_type, target_id, at,
             source, details)
         SELECT $25::text, $26::text, $27::text, $28::text, $29::text, $30::text, $31::text,
             $32::timestamptz, $33::text, $34::jsonb
         FROM c WHERE $24::boolean
     )
     SELECT (SELECT state FROM k), EXISTS (SELECT 1 FROM c)";

/// Most creates one group commit takes.
const CREATE_BATCH: usize = 64;
/// Group commits of creates in flight at once.
const CREATE_WRITERS: usize = 2;

/// A create waiting for its group commit: the credential, its sealed
/// secrets, its audit entry, and who hears the outcome.
type CreateJob = (
    CredentialRecord,
    Vec<SealedSecret>,
    AuditEntry,
    oneshot::Sender<Result<()>>,
);

/// What the group statement did with one create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grouped {
    Inserted,
    KeyRetired,
    /// Not inserted: the name is taken (by a stored credential or by an
    /// earlier create of the group), or its lock is held by another
    /// transaction. Tried alone, which waits for the lock and says who
    /// holds the name.
    Alone,
}

/// Group commit of creates, as [`event_writer`] does for ingress: takes
/// every create queued (up to [`CREATE_BATCH`]) and writes them with one
/// statement, so one transaction, one WAL flush and one round trip serve
/// them all. PostgreSQL spends most of a lone create on the statement and
/// its commit rather than on the rows (in `pgbench`, eight creates per
/// statement went in four times as fast as one per statement). What the
/// group leaves unanswered goes alone, each on a task and connection of its
/// own ([`create_alone`]), so a create that waits for a lock never holds up
/// the writer.
async fn create_writer(pool: Pool, queue: Arc<Queue<CreateJob>>) {
    // Each group on a connection of its own, sent as soon as it is taken.
    while let Some((batch, in_flight)) = next_batch(&queue, CREATE_BATCH, 1).await {
        // A group of one too: the writer is busy for its round trip, and
        // the creates that arrive meanwhile make the next group.
        let items: Vec<_> = batch
            .iter()
            .map(|(rec, secrets, audit, _)| (rec, secrets.as_slice(), audit))
            .collect();
        let answers = match pool.get().await {
            Ok(client) => group_answers(&client, &items).await.unwrap_or_else(|_| {
                // Not the error's text: it may quote a row.
                tracing::warn!(
                    creates = items.len(),
                    "a group of creates failed; trying each alone"
                );
                vec![None; items.len()]
            }),
            Err(_) => vec![None; items.len()],
        };
        drop((items, in_flight));
        for (job, answer) in batch.into_iter().zip(answers) {
            match answer {
                Some(outcome) => {
                    let _ = job.3.send(outcome);
                }
                None => {
                    tokio::spawn(create_alone(pool.clone(), job));
                }
            }
        }
    }
}

/// One create, alone ([`insert_credential`]), answered to its caller.
async fn create_alone(pool: Pool, (rec, secrets, audit, done): CreateJob) {
    let outcome = match pool.get().await {
        Ok(client) => insert_credential(&client, &rec, &secrets, Some(&audit)).await,
        Err(e) => Err(backend(&e)),
    };
    let _ = done.send(outcome);
}

/// The group's statement ([`insert_group`]) and each create's answer as
/// [`insert_credential`] would have given it alone, or `None` where only a
/// create alone can answer: its name was taken or locked, or its id came
/// earlier in the group. `Err` when the statement failed: nothing of the
/// group is stored then.
async fn group_answers(
    c: &impl GenericClient,
    items: &[(&CredentialRecord, &[SealedSecret], &AuditEntry)],
) -> Result<Vec<Option<Result<()>>>> {
    let mut seen = std::collections::HashSet::new();
    let first: Vec<bool> = items.iter().map(|i| seen.insert(i.0.id.as_str())).collect();
    let group: Vec<_> = items
        .iter()
        .zip(&first)
        .filter(|(_, first)| **first)
        .map(|(i, _)| *i)
        .collect();
    let mut grouped = insert_group(c, &group).await?.into_iter();
    Ok(items
        .iter()
        .zip(first)
        .map(
            |(item, first)| match first.then(|| grouped.next()).flatten() {
                Some(Grouped::Inserted) => Some(Ok(())),
                Some(Grouped::KeyRetired) => {
                    Some(Err(StoreError::KeyRetired(item.0.kek_id.clone())))
                }
                Some(Grouped::Alone) | None => None,
            },
        )
        .collect())
}

/// One statement for a group of creates; the outcome of each, in order.
/// Columns go in as one array each, so the statement's text is the same
/// whatever the group's size (parsed and planned once per connection).
async fn insert_group(
    c: &impl GenericClient,
    items: &[(&CredentialRecord, &[SealedSecret], &AuditEntry)],
) -> Result<Vec<Grouped>> {
    let col = |f: fn(&CredentialRecord) -> &str| items.iter().map(|i| f(i.0)).collect::<Vec<_>>();
    let audit_col = |f: fn(&AuditEntry) -> &str| items.iter().map(|i| f(i.2)).collect::<Vec<_>>();
    let ids = col(|r| &r.id);
    let tenants = col(|r| &r.tenant_id);
    let names = col(|r| &r.name);
    let descriptions = col(|r| &r.description);
    let integrations = col(|r| &r.integration_id);
    let auth_types = col(|r| &r.auth_type);
    let services: Vec<_> = items.iter().map(|i| Json(&i.0.services)).collect();
    let scopes: Vec<_> = items.iter().map(|i| Json(&i.0.scopes)).collect();
    let params_: Vec<_> = items.iter().map(|i| Json(&i.0.params)).collect();
    let fields: Vec<_> = items.iter().map(|i| Json(&i.0.secret_fields)).collect();
    let statuses = col(|r| &r.status);
    let messages: Vec<Option<&str>> = items
        .iter()
        .map(|i| i.0.status_message.as_deref())
        .collect();
    let checked: Vec<Option<DateTime<Utc>>> =
        items.iter().map(|i| i.0.checked_at.map(ms)).collect();
    let versions: Vec<i64> = items.iter().map(|i| i.0.version).collect();
    let keks = col(|r| &r.kek_id);
    let deks: Vec<&[u8]> = items.iter().map(|i| i.0.wrapped_dek.as_slice()).collect();
    let created: Vec<DateTime<Utc>> = items.iter().map(|i| ms(i.0.created_at)).collect();
    let created_by = col(|r| &r.created_by);
    let updated: Vec<DateTime<Utc>> = items.iter().map(|i| ms(i.0.updated_at)).collect();
    let updated_by = col(|r| &r.updated_by);
    // One row per field of each credential, the last given winning, as
    // `insert_credential` does.
    let (mut secret_ids, mut secret_fields, mut sealed) = (Vec::new(), Vec::new(), Vec::new());
    for (rec, secrets, _) in items {
        let mut last = BTreeMap::new();
        for s in secrets.iter() {
            last.insert(s.field.as_str(), s.sealed.as_slice());
        }
        for (field, bytes) in last {
            secret_ids.push(rec.id.as_str());
            secret_fields.push(field);
            sealed.push(bytes);
        }
    }
    let audit_ids = audit_col(|a| &a.id);
    let audit_tenants = audit_col(|a| &a.tenant_id);
    let actors = audit_col(|a| &a.actor_id);
    let actor_names = audit_col(|a| &a.actor_name);
    let actions = audit_col(|a| &a.action);
    let target_types = audit_col(|a| &a.target_type);
    let target_ids = audit_col(|a| &a.target_id);
    let audit_at: Vec<DateTime<Utc>> = items.iter().map(|i| ms(i.2.at)).collect();
    let sources: Vec<Option<&str>> = items.iter().map(|i| i.2.source.as_deref()).collect();
    let details: Vec<Json<&serde_json::Value>> = items.iter().map(|i| Json(&i.2.details)).collect();
    let kind = NameLock::Credential as i32;
    let params: [&(dyn ToSql + Sync); 34] = [
        &ids,
        &tenants,
        &names,
        &descriptions,
        &integrations,
        &auth_types,
        &services,
        &scopes,
        &params_,
        &fields,
        &statuses,
        &messages,
        &checked,
        &versions,
        &keks,
        &deks,
        &created,
        &created_by,
        &updated,
        &updated_by,
        &audit_ids,
        &audit_tenants,
        &actors,
        &actor_names,
        &actions,
        &target_types,
        &target_ids,
        &audit_at,
        &sources,
        &details,
        &kind,
        &secret_ids,
        &secret_fields,
        &sealed,
    ];
    let mut by_id = HashMap::with_capacity(items.len());
    for r in rows(c, INSERT_CREDENTIALS_SQL, &params).await? {
        let id: String = r.try_get(0).map_err(pg)?;
        let outcome = if r.try_get::<_, bool>(1).map_err(pg)? {
            Grouped::Inserted
        } else if r.try_get::<_, bool>(2).map_err(pg)? {
            Grouped::KeyRetired
        } else {
            Grouped::Alone
        };
        by_id.insert(id, outcome);
    }
    items
        .iter()
        .map(|i| {
            by_id.get(&i.0.id).copied().ok_or_else(|| {
                StoreError::Backend(format!("the group create did not answer for {}", i.0.id))
            })
        })
        .collect()
}

/// [`INSERT_CREDENTIAL_SQL`] for many creates at once (ids distinct), with
/// the same locks, not waited for the same way:
///
/// - `k` share-locks the rows of every master key the group uses, in id
///   order, as a lone create does its key's.
/// - `l` tries each name's advisory lock (`pg_try_advisory_xact_lock`) and
///   never waits for one: a create whose name another transaction holds is
///   left out, and tried alone afterwards, which waits. So a group waits for
///   no name lock. It may wait for a row another transaction wrote (a
///   credential renamed away from a name the group creates); such a writer
///   holds that name's lock or takes no lock after writing (a rename takes
///   one before; an import takes all of its names before writing), so it
///   never waits for the group in turn.
/// - The rows go in in the group's order, so of two creates of one name the
///   first wins; `ON CONFLICT ... DO NOTHING` skips a name that is taken, by
///   a stored row or an earlier row of the group (tried alone afterwards,
///   which says by whom).
/// - Secrets and audit entries go in only for the credentials inserted.
///
/// It answers, per create: its id, whether it was inserted, and whether its
/// master key is retired.
const INSERT_CREDENTIALS_SQL: &str = "WITH v AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
            $6::text[], $7::jsonb[], $8::jsonb[], $9::jsonb[], $10::jsonb[], $11::text[],
            $12::text[], $13::timestamptz[], $14::bigint[], $15::text[], $16::bytea[],
            $17::timestamptz[], $18::text[], $19::timestamptz[], $20::text[],
            $21::text[], $22::text[], $23::text[], $24::text[], $25::text[], $26::text[],
            $27::text[], $28::timestamptz[], $29::text[], $30::jsonb[])
        WITH ORDINALITY
        AS u (id, tenant_id, name, description, integration_id, auth_type, services, scopes,
              params, secret_fields, status, status_message, checked_at, version, kek_id,
              wrapped_dek, created_at, created_by, updated_at, updated_by,
              a_id, a_tenant_id, a_actor_id, a_actor_name, a_action, a_target_type,
              a_target_id, a_at, a_source, a_details, ord)
     ),
     k AS (
         SELECT id, state FROM master_keys WHERE id IN (SELECT kek_id FROM v)
         ORDER BY id FOR SHARE
     ),
     l AS MATERIALIZED (
         SELECT h, pg_try_advisory_xact_lock($31::int4, h) AS locked
         FROM (SELECT DISTINCT hashtext(tenant_id || '/' || lower(name COLLATE \"C\")) AS h
               FROM v ORDER BY 1) AS names
     ),
     c AS (
         INSERT INTO credentials (id, tenant_id, name, description, integration_id, auth_type,
             services, scopes, params, secret_fields, status, status_message, checked_at, version,
             kek_id, wrapped_dek, created_at, created_by, updated_at, updated_by)
         SELECT v.id, v.tenant_id, v.name, v.description, v.integration_id, v.auth_type,
             v.services, v.scopes, v.params, v.secret_fields, v.status, v.status_message,
             v.checked_at, v.version, v.kek_id, v.wrapped_dek, v.created_at, v.created_by,
             v.updated_at, v.updated_by
         FROM v JOIN l
           ON l.h = hashtext(v.tenant_id || '/' || lower(v.name COLLATE \"C\")) AND l.locked
         WHERE NOT EXISTS (SELECT 1 FROM k WHERE k.id = v.kek_id AND k.state = 'retired')
         ORDER BY v.ord
         ON CONFLICT (tenant_id, lower(name COLLATE \"C\")) DO NOTHING
         RETURNING id
     ),
     s AS (
         INSERT INTO credential_secrets (credential_id, field, sealed)
         SELECT f.credential_id, f.field, f.sealed
         FROM unnest($32::text[], $33::text[], $34::bytea[]) AS f (credential_id, field, sealed)
         JOIN c ON c.id = f.credential_id
     ),
     a AS (
         INSERT INTO audit (id, tenant_id, actor_id, actor_name, action, target_type, target_id, at,
             source, details)
         SELECT v.a_id, v.a_tenant_id, v.a_actor_id, v.a_actor_name, v.a_action, v.a_target_type,
             v.a_target_id, v.a_at, v.a_source, v.a_details
         FROM v JOIN c ON c.id = v.id
     )
     SELECT v.id, c.id IS NOT NULL,
            EXISTS (SELECT 1 FROM k WHERE k.id = v.kek_id AND k.state = 'retired')
     FROM v LEFT JOIN c ON c.id = v.id";

/// A data key wrapped by a retired master key must not be stored: nothing
/// would re-wrap it. The shared row lock makes `retire_key`, which updates
/// that row first, wait for this transaction (and this one for it).
async fn refuse_retired_key(tx: &impl GenericClient, kek_id: &str) -> Result<()> {
    retired_key_state(row(tx, RETIRED_KEY_SQL, &[&kek_id]).await?, kek_id)
}

const RETIRED_KEY_SQL: &str = "SELECT state FROM master_keys WHERE id = $1 FOR SHARE";

fn retired_key_state(state: Option<Row>, kek_id: &str) -> Result<()> {
    match state
        .map(|r| r.try_get::<_, String>(0))
        .transpose()
        .map_err(pg)?
        .as_deref()
    {
        Some("retired") => Err(StoreError::KeyRetired(kek_id.to_string())),
        _ => Ok(()),
    }
}

async fn update_credential(tx: &impl GenericClient, u: &CredentialUpdate) -> Result<()> {
    let rec = &u.record;
    lock_version(
        tx,
        Versioned::Credential,
        &rec.tenant_id,
        &rec.id,
        u.expected_version,
    )
    .await?;
    lock_name(tx, NameLock::Credential, &rec.tenant_id, &rec.name).await?;
    name_clash(tx, &rec.tenant_id, &rec.name, &rec.id).await?;
    exec(
        tx,
        "UPDATE credentials SET name = $3, description = $4, services = $5, scopes = $6, params = $7,
           secret_fields = $8, status = $9, status_message = $10, checked_at = $11, version = $12,
           updated_at = $13, updated_by = $14, integration_id = $15, auth_type = $16
         WHERE tenant_id = $1 AND id = $2",
        &[
            &rec.tenant_id,
            &rec.id,
            &rec.name,
            &rec.description,
            &Json(&rec.services),
            &Json(&rec.scopes),
            &Json(&rec.params),
            &Json(&rec.secret_fields),
            &rec.status,
            &rec.status_message,
            &rec.checked_at.map(ms),
            &rec.version,
            &ms(rec.updated_at),
            &rec.updated_by,
            &rec.integration_id,
            &rec.auth_type,
        ],
    )
    .await?;
    put_secrets(tx, &rec.id, &u.put_secrets).await?;
    for field in &u.remove_secrets {
        exec(
            tx,
            "DELETE FROM credential_secrets WHERE credential_id = $1 AND field = $2",
            &[&rec.id, field],
        )
        .await?;
    }
    Ok(())
}

const AUDIT_SQL: &str =
    "INSERT INTO audit (id, tenant_id, actor_id, actor_name, action, target_type, target_id, at, source, details)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// The parameters of [`AUDIT_SQL`]; `at` is `a.at` as stored ([`ms`]).
fn audit_row<'a>(a: &'a AuditEntry, at: &'a DateTime<Utc>) -> [&'a (dyn ToSql + Sync); 10] {
    [
        &a.id,
        &a.tenant_id,
        &a.actor_id,
        &a.actor_name,
        &a.action,
        &a.target_type,
        &a.target_id,
        at,
        &a.source,
        &a.details,
    ]
}

async fn write_audit(c: &impl GenericClient, a: &AuditEntry) -> Result<()> {
    exec(c, AUDIT_SQL, &audit_row(a, &ms(a.at))).await?;
    Ok(())
}

/// Queues this transaction behind any other that checks or writes the same
/// name of the same tenant, until commit; the check that follows then sees
/// the other's row. (A hash collision only makes two names queue together.)
const LOCK_NAME_SQL: &str =
    "SELECT pg_advisory_xact_lock($1::int4, hashtext($2::text || '/' || lower($3::text COLLATE \"C\")))";

/// [`LOCK_NAME_SQL`] for many (tenant, name) pairs, in the locks' order.
const LOCK_NAMES_SQL: &str = "SELECT count(pg_advisory_xact_lock($1::int4, h))
     FROM (SELECT DISTINCT hashtext(t || '/' || lower(n COLLATE \"C\")) AS h
           FROM unnest($2::text[], $3::text[]) AS u (t, n) ORDER BY 1) AS names";

async fn lock_name(c: &impl GenericClient, kind: NameLock, tenant: &str, name: &str) -> Result<()> {
    exec(c, LOCK_NAME_SQL, &[&(kind as i32), &tenant, &name]).await?;
    Ok(())
}

const CREDENTIAL_COLUMNS: &str = "id, tenant_id, name, description, integration_id, auth_type, services, scopes, params,
    secret_fields, status, status_message, checked_at, version, kek_id, wrapped_dek, created_at, created_by, updated_at, updated_by";

/// How many columns [`CREDENTIAL_COLUMNS`] names.
const CREDENTIAL_COLUMN_COUNT: usize = 20;

/// A credential and its stored ingress counters, as three arrays in the
/// counters' order (empty when there are none), picked by the SQL
/// expressions `tenant` and `id`.
fn credential_with_counters_sql(tenant: &str, id: &str) -> String {
    let counter = |column: &str| {
        format!(
            "ARRAY(SELECT {column} FROM ingress_counters i
                   WHERE i.credential_id = c.id ORDER BY kind, outcome)"
        )
    };
    format!(
        "SELECT {CREDENTIAL_COLUMNS}, {}, {}, {} FROM credentials c
         WHERE c.tenant_id = {tenant} AND c.id = {id}",
        counter("kind"),
        counter("outcome"),
        counter("count")
    )
}

static CREDENTIAL_WITH_COUNTERS_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| credential_with_counters_sql("$1", "$2"));

/// The live token whose hash is `$1` and its tenant, then that tenant's
/// credential `$2` as [`CREDENTIAL_WITH_COUNTERS_SQL`] reads it (all NULL
/// when there is none).
static TOKEN_WITH_CREDENTIAL_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT k.id, k.tenant_id, k.name, k.role, k.hash, k.created_at, k.created_by, k.revoked_at,
                t.id, t.name, t.is_operator, t.created_at, w.*
         FROM tokens k JOIN tenants t ON t.id = k.tenant_id
         LEFT JOIN LATERAL ({}) w ON true
         WHERE k.hash = $1 AND k.revoked_at IS NULL",
        credential_with_counters_sql("k.tenant_id", "$2")
    )
});

/// Where the credential starts in a row of [`TOKEN_WITH_CREDENTIAL_SQL`].
const TOKEN_WITH_CREDENTIAL_AT: usize = 12;

/// A row of [`CREDENTIAL_WITH_COUNTERS_SQL`]'s columns, from column `at`.
fn credential_with_counters_from_row(
    r: &Row,
    at: usize,
) -> std::result::Result<(CredentialRecord, Vec<CounterDelta>), tokio_postgres::Error> {
    let rec = credential_at(r, at)?;
    let n = at + CREDENTIAL_COLUMN_COUNT;
    let kinds: Vec<String> = r.try_get(n)?;
    let outcomes: Vec<String> = r.try_get(n + 1)?;
    let counts: Vec<i64> = r.try_get(n + 2)?;
    let counted = kinds
        .into_iter()
        .zip(outcomes)
        .zip(counts)
        .map(|((kind, outcome), count)| CounterDelta {
            credential_id: rec.id.clone(),
            kind,
            outcome,
            count: count as u64,
        })
        .collect();
    Ok((rec, counted))
}

fn credential_from_row(r: &Row) -> std::result::Result<CredentialRecord, tokio_postgres::Error> {
    credential_at(r, 0)
}

/// A credential from the row's columns `at` onwards.
fn credential_at(
    r: &Row,
    at: usize,
) -> std::result::Result<CredentialRecord, tokio_postgres::Error> {
    Ok(CredentialRecord {
        id: r.try_get(at)?,
        tenant_id: r.try_get(at + 1)?,
        name: r.try_get(at + 2)?,
        description: r.try_get(at + 3)?,
        integration_id: r.try_get(at + 4)?,
        auth_type: r.try_get(at + 5)?,
        services: r.try_get::<_, Json<BTreeMap<String, String>>>(at + 6)?.0,
        scopes: r.try_get::<_, Json<Vec<String>>>(at + 7)?.0,
        params: r.try_get::<_, Json<BTreeMap<String, String>>>(at + 8)?.0,
        secret_fields: r.try_get::<_, Json<Vec<SecretMeta>>>(at + 9)?.0,
        status: r.try_get(at + 10)?,
        status_message: r.try_get(at + 11)?,
        checked_at: r.try_get(at + 12)?,
        version: r.try_get(at + 13)?,
        kek_id: r.try_get(at + 14)?,
        wrapped_dek: r.try_get(at + 15)?,
        created_at: r.try_get(at + 16)?,
        created_by: r.try_get(at + 17)?,
        updated_at: r.try_get(at + 18)?,
        updated_by: r.try_get(at + 19)?,
    })
}

fn tenant_from_row(r: &Row, at: usize) -> std::result::Result<TenantRecord, tokio_postgres::Error> {
    Ok(TenantRecord {
        id: r.try_get(at)?,
        name: r.try_get(at + 1)?,
        is_operator: r.try_get(at + 2)?,
        created_at: r.try_get(at + 3)?,
    })
}

fn token_from_row(r: &Row) -> std::result::Result<TokenRecord, tokio_postgres::Error> {
    let hash: Vec<u8> = r.try_get(4)?;
    Ok(TokenRecord {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        name: r.try_get(2)?,
        role: r.try_get(3)?,
        hash: hash.try_into().unwrap_or([0; 32]),
        created_at: r.try_get(5)?,
        created_by: r.try_get(6)?,
        revoked_at: r.try_get(7)?,
    })
}

const TOKEN_COLUMNS: &str = "id, tenant_id, name, role, hash, created_at, created_by, revoked_at";

async fn insert_token(c: &impl GenericClient, t: &TokenRecord) -> Result<()> {
    exec(
        c,
        "INSERT INTO tokens (id, tenant_id, name, role, hash, created_at, created_by, revoked_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &t.id,
            &t.tenant_id,
            &t.name,
            &t.role,
            &t.hash.as_slice(),
            &ms(t.created_at),
            &t.created_by,
            &t.revoked_at.map(ms),
        ],
    )
    .await?;
    Ok(())
}

/// NameTaken with the id of another credential of the tenant with this name
/// (compared with ASCII case folded, as SQLite's `lower` does).
const NAME_CLASH_SQL: &str = "SELECT id FROM credentials
     WHERE tenant_id = $1 AND lower(name COLLATE \"C\") = lower($2::text COLLATE \"C\") AND id <> $3
     LIMIT 1";

async fn name_clash(c: &impl GenericClient, tenant: &str, name: &str, except: &str) -> Result<()> {
    name_clash_row(row(c, NAME_CLASH_SQL, &[&tenant, &name, &except]).await?)
}

fn name_clash_row(clash: Option<Row>) -> Result<()> {
    match clash {
        Some(r) => Err(StoreError::NameTaken(r.try_get(0).map_err(pg)?)),
        None => Ok(()),
    }
}

const PUT_SECRET_SQL: &str =
    "INSERT INTO credential_secrets (credential_id, field, sealed) VALUES ($1, $2, $3)
     ON CONFLICT (credential_id, field) DO UPDATE SET sealed = excluded.sealed";

async fn put_secrets(
    c: &impl GenericClient,
    credential: &str,
    secrets: &[SealedSecret],
) -> Result<()> {
    for s in secrets {
        exec(c, PUT_SECRET_SQL, &[&credential, &s.field, &s.sealed]).await?;
    }
    Ok(())
}

async fn get_credential(
    c: &impl GenericClient,
    tenant: &str,
    id: &str,
) -> Result<Option<CredentialRecord>> {
    let r = row(
        c,
        &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant_id = $1 AND id = $2"),
        &[&tenant, &id],
    )
    .await?;
    r.as_ref().map(credential_from_row).transpose().map_err(pg)
}

/// A credential's stored ingress counters.
async fn counters(c: &impl GenericClient, credential: &str) -> Result<Vec<CounterDelta>> {
    let rows = rows(
        c,
        "SELECT credential_id, kind, outcome, count FROM ingress_counters
         WHERE credential_id = $1 ORDER BY kind, outcome",
        &[&credential],
    )
    .await?;
    map_rows(&rows, |r| {
        Ok(CounterDelta {
            credential_id: r.try_get(0)?,
            kind: r.try_get(1)?,
            outcome: r.try_get(2)?,
            count: r.try_get::<_, i64>(3)? as u64,
        })
    })
}

async fn sealed_secrets(c: &impl GenericClient, credential: &str) -> Result<Vec<SealedSecret>> {
    let rows = rows(
        c,
        "SELECT field, sealed FROM credential_secrets WHERE credential_id = $1 ORDER BY field",
        &[&credential],
    )
    .await?;
    map_rows(&rows, |r| {
        Ok(SealedSecret {
            field: r.try_get(0)?,
            sealed: r.try_get(1)?,
        })
    })
}

async fn query_credentials(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<CredentialRecord>> {
    map_rows(&rows(c, sql, params).await?, credential_from_row)
}

/// The conditions every phase of a credential list shares: tenant, exact
/// filters, cursor.
fn credential_conditions(
    tenant: &str,
    f: &CredentialFilter,
    after: Option<&str>,
    args: &mut Args,
) -> String {
    let mut base = format!("c.tenant_id = {}", args.bind(tenant.to_string()));
    for (column, value) in [
        ("integration_id", &f.integration),
        ("auth_type", &f.auth_type),
        ("status", &f.status),
    ] {
        if let Some(v) = value {
            base.push_str(&format!(" AND c.{column} = {}", args.bind(v.clone())));
        }
    }
    if let Some(after) = after {
        base.push_str(&format!(" AND c.id < {}", args.bind(after.to_string())));
    }
    base
}

/// Scans the newest `SEARCH_WINDOW` rows (names and integrations only) for
/// matches, and on in further windows while [`crate::next_window`] expects
/// a page within reach. Answers the page when the scan found a full page of
/// matches or reached the end of the list; `None` when the index must
/// decide.
///
/// PostgreSQL matches each window itself and answers one row: how many rows
/// the window held, the last one's id, and its first matches (as many as
/// make `limit + 1` with those of earlier windows).
/// Sending every row of the window to be matched here cost more than the
/// scan (a word in 1% of a million names reads about 5,000 rows). The scan
/// reads `name_folded`, the name lowercased by PostgreSQL when written (as
/// the index's `lower(name) LIKE` lowercases it), from the covering index
/// of migration 0005. The query is lowercased by PostgreSQL too, once per
/// statement: Rust's lowercasing differs from the database's for a few
/// letters (`İ`, say), and a name it lowercases so would not be found.
async fn search_window(
    c: &impl GenericClient,
    tenant: &str,
    f: &CredentialFilter,
    after: Option<&str>,
    q: &str,
    limit: usize,
) -> Result<Option<Vec<CredentialRecord>>> {
    let (mut seen, mut hits) = (0i64, Vec::<i64>::new());
    let (mut from, mut size) = (after.map(str::to_string), SEARCH_WINDOW);
    loop {
        let mut args = Args::default();
        let base = credential_conditions(tenant, f, from.as_deref(), &mut args);
        let mut matches = Vec::new();
        // No name holds a NUL (text cannot), and the server refuses one in
        // a parameter: such a query matches by integration only.
        if !q.contains('\0') {
            matches.push(format!(
                "strpos(w.name_folded, (SELECT lower({}::text))) > 0",
                args.bind(q.to_string())
            ));
        }
        if !f.q_integrations.is_empty() {
            matches.push(format!(
                "w.integration_id = ANY({})",
                args.bind(f.q_integrations.clone())
            ));
        }
        if matches.is_empty() {
            matches.push("false".to_string());
        }
        let sql = format!(
            "SELECT count(*), min(w.id),
                    (array_agg(w.seq ORDER BY w.id DESC) FILTER (WHERE {}))[1:{}]
             FROM (SELECT c.seq, c.id, c.name_folded, c.integration_id FROM credentials c
                   WHERE {base} ORDER BY c.id DESC LIMIT {}) w",
            matches.join(" OR "),
            args.bind((limit + 1 - hits.len()) as i32),
            args.bind(size)
        );
        let window = rows(c, &sql, &args.refs()).await?;
        let window = window
            .first()
            .ok_or_else(|| StoreError::Backend("a search window answered no row".into()))?;
        let count: i64 = window.try_get(0).map_err(pg)?;
        let last: Option<String> = window.try_get(1).map_err(pg)?;
        let found: Option<Vec<i64>> = window.try_get(2).map_err(pg)?;
        hits.extend(found.unwrap_or_default());
        seen += count;
        if hits.len() > limit || count < size {
            break;
        }
        match crate::next_window(hits.len(), seen, limit) {
            Some(more) => size = more,
            None => return Ok(None),
        }
        from = match last {
            Some(id) => Some(id),
            None => break,
        };
    }
    if hits.is_empty() {
        return Ok(Some(Vec::new()));
    }
    query_credentials(
        c,
        &format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant_id = $1 AND seq = ANY($2) ORDER BY id DESC"
        ),
        &[&tenant, &hits],
    )
    .await
    .map(Some)
}

const SERVICE_COLUMNS: &str = "id, tenant_id, name, role, description, integrations, spec, version,
    created_at, created_by, updated_at, updated_by";

fn service_from_row(r: &Row) -> std::result::Result<ServiceRecord, tokio_postgres::Error> {
    Ok(ServiceRecord {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        name: r.try_get(2)?,
        role: r.try_get(3)?,
        description: r.try_get(4)?,
        integrations: r.try_get::<_, Json<Vec<String>>>(5)?.0,
        spec: r.try_get(6)?,
        version: r.try_get(7)?,
        created_at: r.try_get(8)?,
        created_by: r.try_get(9)?,
        updated_at: r.try_get(10)?,
        updated_by: r.try_get(11)?,
    })
}

/// The credentials of a tenant that use a service, as (id, name).
async fn credentials_using(
    c: &impl GenericClient,
    tenant: &str,
    service: &str,
) -> Result<Vec<(String, String)>> {
    let rows = rows(
        c,
        "SELECT id, name FROM credentials
         WHERE tenant_id = $1 AND EXISTS (SELECT 1 FROM jsonb_each_text(services) WHERE value = $2::text)
         ORDER BY id",
        &[&tenant, &service],
    )
    .await?;
    map_rows(&rows, |r| Ok((r.try_get(0)?, r.try_get(1)?)))
}

async fn service_name_clash(c: &impl GenericClient, svc: &ServiceRecord) -> Result<()> {
    let clash = row(
        c,
        "SELECT id FROM services
         WHERE tenant_id = $1 AND lower(name COLLATE \"C\") = lower($2::text COLLATE \"C\") AND id <> $3
         LIMIT 1",
        &[&svc.tenant_id, &svc.name, &svc.id],
    )
    .await?;
    match clash {
        Some(r) => Err(StoreError::NameTaken(r.try_get(0).map_err(pg)?)),
        None => Ok(()),
    }
}

const EVENT_COLUMNS: &str =
    "id, tenant_id, credential_id, kind, valid_request, app_user_id, user_id,
    event_type, delivery_id, payload, received_at";

fn event_from_row(r: &Row) -> std::result::Result<EventRecord, tokio_postgres::Error> {
    Ok(EventRecord {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        credential_id: r.try_get(2)?,
        kind: r.try_get(3)?,
        valid_request: r.try_get(4)?,
        app_user_id: r.try_get(5)?,
        user_id: r.try_get(6)?,
        event_type: r.try_get(7)?,
        delivery_id: r.try_get(8)?,
        payload: r.try_get(9)?,
        received_at: r.try_get(10)?,
    })
}

/// NotFound unless the credential belongs to the tenant. In a mutation,
/// `lock` keeps the credential from being deleted until commit.
async fn owned_credential(
    c: &impl GenericClient,
    tenant: &str,
    credential: &str,
    lock: bool,
) -> Result<()> {
    let sql = if lock {
        "SELECT 1 FROM credentials WHERE tenant_id = $1 AND id = $2 FOR KEY SHARE"
    } else {
        "SELECT 1 FROM credentials WHERE tenant_id = $1 AND id = $2"
    };
    match row(c, sql, &[&tenant, &credential]).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound),
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let client = self.client().await?;
        let r = row(&client, "SELECT value FROM meta WHERE key = $1", &[&key]).await?;
        r.map(|r| r.try_get(0)).transpose().map_err(pg)
    }

    async fn meta_put_if_absent(&self, key: &str, value: Vec<u8>) -> Result<bool> {
        let client = self.client().await?;
        // One statement: a transaction of its own.
        let n = exec(
            &client,
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &value],
        )
        .await?;
        Ok(n == 1)
    }

    async fn has_credentials(&self) -> Result<bool> {
        let client = self.client().await?;
        client
            .query_one("SELECT EXISTS (SELECT 1 FROM credentials)", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg)
    }

    async fn create_tenant(
        &self,
        t: TenantRecord,
        admin: TokenRecord,
        audit: Option<AuditEntry>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        lock_name(&tx, NameLock::Tenant, "", &t.name).await?;
        let taken = row(
            &tx,
            "SELECT 1 FROM tenants WHERE lower(name COLLATE \"C\") = lower($1::text COLLATE \"C\")",
            &[&t.name],
        )
        .await?;
        if taken.is_some() {
            return Err(StoreError::Conflict);
        }
        exec(
            &tx,
            "INSERT INTO tenants (id, name, is_operator, created_at) VALUES ($1, $2, $3, $4)",
            &[&t.id, &t.name, &t.is_operator, &ms(t.created_at)],
        )
        .await?;
        insert_token(&tx, &admin).await?;
        if let Some(a) = &audit {
            write_audit(&tx, a).await?;
        }
        tx.commit().await.map_err(pg)
    }

    async fn list_tenants(&self, p: PageRequest<'_>) -> Result<Page<TenantRecord>> {
        let client = self.client().await?;
        let rows = rows(
            &client,
            "SELECT id, name, is_operator, created_at FROM tenants
             WHERE ($1::text IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
            &[&p.after, &(p.limit as i64 + 1)],
        )
        .await?;
        let items = map_rows(&rows, |r| tenant_from_row(r, 0))?;
        Ok(page(items, p.limit, |t| &t.id))
    }

    async fn tenant_count(&self) -> Result<u64> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one("SELECT count(*) FROM tenants", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg)?;
        Ok(n as u64)
    }

    async fn create_token(&self, token: TokenRecord, audit: AuditEntry) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        insert_token(&tx, &token).await?;
        write_audit(&tx, &audit).await?;
        tx.commit().await.map_err(pg)
    }

    async fn list_tokens(&self, tenant: &str, p: PageRequest<'_>) -> Result<Page<TokenRecord>> {
        let client = self.client().await?;
        let rows = rows(
            &client,
            &format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens
                 WHERE tenant_id = $1 AND ($2::text IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
            ),
            &[&tenant, &p.after, &(p.limit as i64 + 1)],
        )
        .await?;
        let items = map_rows(&rows, token_from_row)?;
        Ok(page(items, p.limit, |t| &t.id))
    }

    async fn revoke_token(
        &self,
        tenant: &str,
        id: &str,
        at: DateTime<Utc>,
        audit: AuditEntry,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let n = exec(
            &tx,
            "UPDATE tokens SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
            &[&tenant, &id, &ms(at)],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        write_audit(&tx, &audit).await?;
        tx.commit().await.map_err(pg)
    }

    async fn find_token(&self, hash: [u8; 32]) -> Result<Option<(TokenRecord, TenantRecord)>> {
        let client = self.client().await?;
        let r = row(
            &client,
            "SELECT k.id, k.tenant_id, k.name, k.role, k.hash, k.created_at, k.created_by, k.revoked_at,
                    t.id, t.name, t.is_operator, t.created_at
             FROM tokens k JOIN tenants t ON t.id = k.tenant_id
             WHERE k.hash = $1 AND k.revoked_at IS NULL",
            &[&hash.as_slice()],
        )
        .await?;
        r.map(|r| Ok((token_from_row(&r)?, tenant_from_row(&r, 8)?)))
            .transpose()
            .map_err(pg)
    }

    async fn insert_credential(
        &self,
        rec: CredentialRecord,
        secrets: Vec<SealedSecret>,
        audit: AuditEntry,
    ) -> Result<()> {
        // One statement and transaction for every create queued meanwhile.
        let queue = self
            .creates
            .get_or_init(|| start_writers(&self.pool, 1024, CREATE_WRITERS, create_writer));
        let (done, wait) = oneshot::channel();
        if let Err(mpsc::error::SendError((rec, secrets, audit, _))) =
            queue.send((rec, secrets, audit, done)).await
        {
            // The writers are gone (they panicked): the create goes alone.
            let client = self.client().await?;
            return insert_credential(&client, &rec, &secrets, Some(&audit)).await;
        }
        wait.await
            .map_err(|_| StoreError::Backend("the create writer dropped a create".into()))?
    }

    async fn import_credentials(&self, items: Vec<ImportItem>, audit: AuditEntry) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // Every name the import writes, locked before it writes anything, in
        // the locks' order: a group of creates, which only tries name locks
        // and may wait for a row this import wrote, then holds none that
        // this import waits for later ([`INSERT_CREDENTIALS_SQL`]).
        let (tenants, names): (Vec<&str>, Vec<&str>) = items
            .iter()
            .map(|item| match item {
                ImportItem::Insert(rec, _) => (rec.tenant_id.as_str(), rec.name.as_str()),
                ImportItem::Update(u) => (u.record.tenant_id.as_str(), u.record.name.as_str()),
            })
            .unzip();
        exec(
            &tx,
            LOCK_NAMES_SQL,
            &[&(NameLock::Credential as i32), &tenants, &names],
        )
        .await?;
        for item in &items {
            match item {
                ImportItem::Insert(rec, secrets) => {
                    insert_credential(&tx, rec, secrets, None).await?
                }
                ImportItem::Update(u) => update_credential(&tx, u).await?,
            }
        }
        write_audit(&tx, &audit).await?;
        tx.commit().await.map_err(pg)
    }

    async fn get_credential(&self, tenant: &str, id: &str) -> Result<Option<CredentialRecord>> {
        let client = self.client().await?;
        get_credential(&client, tenant, id).await
    }

    async fn credential_id_by_name(&self, tenant: &str, name: &str) -> Result<Option<String>> {
        let client = self.client().await?;
        match name_clash(&client, tenant, name, "").await {
            Err(StoreError::NameTaken(id)) => Ok(Some(id)),
            Err(e) => Err(e),
            Ok(()) => Ok(None),
        }
    }

    async fn get_sealed(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(CredentialRecord, Vec<SealedSecret>)>> {
        let client = self.client().await?;
        let Some(rec) = get_credential(&client, tenant, id).await? else {
            return Ok(None);
        };
        Ok(Some((rec, sealed_secrets(&client, id).await?)))
    }

    async fn list_credentials(
        &self,
        tenant: &str,
        f: &CredentialFilter,
        p: PageRequest<'_>,
    ) -> Result<Page<CredentialRecord>> {
        let mut client = self.client().await?;
        let limit = p.limit;
        let mut args = Args::default();
        let base = credential_conditions(tenant, f, p.after, &mut args);
        let Some(q) = f.q.as_deref().filter(|q| !q.is_empty()) else {
            let sql = format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials c WHERE {base} ORDER BY c.id DESC LIMIT {}",
                args.bind(limit as i64 + 1)
            );
            return Ok(page(
                query_credentials(&client, &sql, &args.refs()).await?,
                limit,
                |c| &c.id,
            ));
        };
        // The windows and the fetch of their matches are several
        // statements: one snapshot for them all, so a row changed meanwhile
        // cannot make a page short (and end the paging early).
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        // A query that matches many names is answered fastest by walking
        // the newest rows in order; one that matches few, by the index.
        if let Some(found) = search_window(&tx, tenant, f, p.after, q, limit).await? {
            tx.commit().await.map_err(pg)?;
            return Ok(page(found, limit, |c| &c.id));
        }
        let mut alternatives = Vec::new();
        // No name holds a NUL (text cannot), and the server refuses one in a
        // parameter: such a query matches by integration only.
        if !q.contains('\0') {
            // Lowercased by PostgreSQL, as the names are (`lower` leaves
            // the escapes alone).
            alternatives.push(format!(
                "lower(c.name) LIKE '%' || lower({}::text) || '%'",
                args.bind(like_escape(q))
            ));
        }
        if !f.q_integrations.is_empty() {
            alternatives.push(format!(
                "c.integration_id = ANY({})",
                args.bind(f.q_integrations.clone())
            ));
        }
        if alternatives.is_empty() {
            return Ok(page(Vec::new(), limit, |c: &CredentialRecord| &c.id));
        }
        let sql = format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials c WHERE {base} AND ({}) ORDER BY c.id DESC LIMIT {}",
            alternatives.join(" OR "),
            args.bind(limit as i64 + 1)
        );
        // Not a cached statement: after a few runs a cached one may settle on
        // a generic plan, which cannot know that the pattern is selective and
        // walks the tenant's rows instead of the trigram index. A fresh
        // statement is planned for its pattern.
        let found = tx.query(sql.as_str(), &args.refs()).await.map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(page(map_rows(&found, credential_from_row)?, limit, |c| {
            &c.id
        }))
    }

    async fn update_credential(&self, u: CredentialUpdate, audit: AuditEntry) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        update_credential(&tx, &u).await?;
        write_audit(&tx, &audit).await?;
        tx.commit().await.map_err(pg)
    }

    async fn delete_credential(&self, tenant: &str, id: &str, audit: AuditEntry) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // Secrets and user mappings go with the row (ON DELETE CASCADE).
        let n = exec(
            &tx,
            "DELETE FROM credentials WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &id],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        exec(
            &tx,
            "DELETE FROM events WHERE tenant_id = $1 AND credential_id = $2",
            &[&tenant, &id],
        )
        .await?;
        exec(
            &tx,
            "DELETE FROM ingress_counters WHERE credential_id = $1",
            &[&id],
        )
        .await?;
        write_audit(&tx, &audit).await?;
        tx.commit().await.map_err(pg)
    }

    async fn list_audit(&self, tenant: &str, p: PageRequest<'_>) -> Result<Page<AuditEntry>> {
        let client = self.client().await?;
        let rows = rows(
            &client,
            "SELECT id, tenant_id, actor_id, actor_name, action, target_type, target_id, at, source, details
             FROM audit WHERE tenant_id = $1 AND ($2::text IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
            &[&tenant, &p.after, &(p.limit as i64 + 1)],
        )
        .await?;
        let items = map_rows(&rows, |r| {
            Ok(AuditEntry {
                id: r.try_get(0)?,
                tenant_id: r.try_get(1)?,
                actor_id: r.try_get(2)?,
                actor_name: r.try_get(3)?,
                action: r.try_get(4)?,
                target_type: r.try_get(5)?,
                target_id: r.try_get(6)?,
                at: r.try_get(7)?,
                source: r.try_get(8)?,
                details: r.try_get(9)?,
            })
        })?;
        Ok(page(items, p.limit, |a| &a.id))
    }

    async fn record_audit(&self, audit: AuditEntry) -> Result<()> {
        let client = self.client().await?;
        // One statement: a transaction of its own.
        write_audit(&client, &audit).await
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
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let n = exec(
            &tx,
            "UPDATE credentials SET status = $3, status_message = $4, checked_at = $5
             WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &id, &status, &message, &ms(checked_at)],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        write_audit(&tx, &audit).await?;
        tx.commit().await.map_err(pg)
    }

    async fn get_sealed_by_id(
        &self,
        id: &str,
    ) -> Result<Option<(CredentialRecord, Vec<SealedSecret>)>> {
        let client = self.client().await?;
        let r = row(
            &client,
            &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = $1"),
            &[&id],
        )
        .await?;
        let Some(rec) = r
            .as_ref()
            .map(credential_from_row)
            .transpose()
            .map_err(pg)?
        else {
            return Ok(None);
        };
        Ok(Some((rec, sealed_secrets(&client, id).await?)))
    }

    async fn create_service(&self, svc: ServiceRecord, audit: AuditEntry) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        lock_name(&tx, NameLock::Service, &svc.tenant_id, &svc.name).await?;
        service_name_clash(&tx, &svc).await?;
        exec(
            &tx,
            &format!(
                "INSERT INTO services ({SERVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            &[
                &svc.id,
                &svc.tenant_id,
                &svc.name,
                &svc.role,
                &svc.description,
                &Json(&svc.integrations),
                &svc.spec,
                &svc.version,
                &ms(svc.created_at),
                &svc.created_by,
                &ms(svc.updated_at),
                &svc.updated_by,
            ],
        )
        .await?;
        write_audit(&tx, &audit).await?;
        tx.commit().await.map_err(pg)
    }

    async fn get_service(&self, tenant: &str, id: &str) -> Result<Option<ServiceRecord>> {
        let client = self.client().await?;
        let r = row(
            &client,
            &format!("SELECT {SERVICE_COLUMNS} FROM services WHERE tenant_id = $1 AND id = $2"),
            &[&tenant, &id],
        )
        .await?;
        r.as_ref().map(service_from_row).transpose().map_err(pg)
    }

    async fn list_services(&self, tenant: &str) -> Result<Vec<ServiceRecord>> {
        let client = self.client().await?;
        let rows = rows(
            &client,
            &format!(
                "SELECT {SERVICE_COLUMNS} FROM services WHERE tenant_id = $1 ORDER BY id DESC"
            ),
            &[&tenant],
        )
        .await?;
        map_rows(&rows, service_from_row)
    }

    async fn update_service(
        &self,
        svc: ServiceRecord,
        expected_version: i64,
        force: bool,
        audit: AuditEntry,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        lock_version(
            &tx,
            Versioned::Service,
            &svc.tenant_id,
            &svc.id,
            expected_version,
        )
        .await?;
        if !force {
            let users = credentials_using(&tx, &svc.tenant_id, &svc.id).await?;
            if !users.is_empty() {
                return Err(StoreError::InUse(users));
            }
        }
        lock_name(&tx, NameLock::Service, &svc.tenant_id, &svc.name).await?;
        service_name_clash(&tx, &svc).await?;
        exec(
            &tx,
            "UPDATE services SET name = $3, description = $4, integrations = $5, spec = $6, version = $7,
               updated_at = $8, updated_by = $9 WHERE tenant_id = $1 AND id = $2",
            &[
                &svc.tenant_id,
                &svc.id,
                &svc.name,
                &svc.description,
                &Json(&svc.integrations),
                &svc.spec,
                &svc.version,
                &ms(svc.updated_at),
                &svc.updated_by,
            ],
        )
        .await?;
        write_audit(&tx, &audit).await?;
        tx.commit().await.map_err(pg)
    }

    async fn delete_service(&self, tenant: &str, id: &str, audit: AuditEntry) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let users = credentials_using(&tx, tenant, id).await?;
        if !users.is_empty() {
            return Err(StoreError::InUse(users));
        }
        let n = exec(
            &tx,
            "DELETE FROM services WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &id],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        write_audit(&tx, &audit).await?;
        tx.commit().await.map_err(pg)
    }

    async fn store_event(&self, e: NewEvent) -> Result<EventStored> {
        let queue = self.events.get_or_init(|| {
            let client = Arc::new(SharedClient::default());
            start_writers(&self.pool, 8192, EVENT_WRITERS, move |pool, queue| {
                event_writer(pool, queue, client.clone())
            })
        });
        let (done, wait) = oneshot::channel();
        queue
            .send((e, done))
            .await
            .map_err(|_| StoreError::Backend("the event writer has stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Backend("the event writer dropped an event".into()))?
    }

    async fn get_event(&self, tenant: &str, id: &str) -> Result<Option<EventRecord>> {
        let client = self.client().await?;
        let r = row(
            &client,
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = $1 AND id = $2"),
            &[&tenant, &id],
        )
        .await?;
        r.as_ref().map(event_from_row).transpose().map_err(pg)
    }

    async fn list_events(
        &self,
        tenant: &str,
        f: &EventFilter,
        p: PageRequest<'_>,
    ) -> Result<Page<EventRecord>> {
        let mut args = Args::default();
        let mut sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = {}",
            args.bind(tenant.to_string())
        );
        for (column, value) in [
            ("credential_id", &f.credential_id),
            ("kind", &f.kind),
            ("event_type", &f.event_type),
            ("user_id", &f.user_id),
        ] {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} = {}", args.bind(v.clone())));
            }
        }
        if let Some(after) = p.after {
            sql.push_str(&format!(" AND id < {}", args.bind(after.to_string())));
        }
        sql.push_str(&format!(
            " ORDER BY id DESC LIMIT {}",
            args.bind(p.limit as i64 + 1)
        ));
        let client = self.client().await?;
        let items = map_rows(&rows(&client, &sql, &args.refs()).await?, event_from_row)?;
        Ok(page(items, p.limit, |e| &e.id))
    }

    async fn put_user_mapping(
        &self,
        tenant: &str,
        credential: &str,
        m: UserMapping,
        audit: AuditEntry,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        owned_credential(&tx, tenant, credential, true).await?;
        exec(
            &tx,
            "INSERT INTO user_mappings (credential_id, app_user_id, user_id, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (credential_id, app_user_id) DO UPDATE SET user_id = excluded.user_id",
            &[&credential, &m.app_user_id, &m.user_id, &ms(m.created_at)],
        )
        .await?;
        write_audit(&tx, &audit).await?;
        tx.commit().await.map_err(pg)
    }

    async fn delete_user_mapping(
        &self,
        tenant: &str,
        credential: &str,
        app_user_id: &str,
        audit: AuditEntry,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        owned_credential(&tx, tenant, credential, true).await?;
        let n = exec(
            &tx,
            "DELETE FROM user_mappings WHERE credential_id = $1 AND app_user_id = $2",
            &[&credential, &app_user_id],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        write_audit(&tx, &audit).await?;
        tx.commit().await.map_err(pg)
    }

    async fn list_user_mappings(
        &self,
        tenant: &str,
        credential: &str,
        p: PageRequest<'_>,
    ) -> Result<Page<UserMapping>> {
        let client = self.client().await?;
        owned_credential(&client, tenant, credential, false).await?;
        let rows = rows(
            &client,
            "SELECT app_user_id, user_id, created_at FROM user_mappings
             WHERE credential_id = $1 AND ($2::text IS NULL OR app_user_id > $2)
             ORDER BY app_user_id LIMIT $3",
            &[&credential, &p.after, &(p.limit as i64 + 1)],
        )
        .await?;
        let items = map_rows(&rows, |r| {
            Ok(UserMapping {
                app_user_id: r.try_get(0)?,
                user_id: r.try_get(1)?,
                created_at: r.try_get(2)?,
            })
        })?;
        Ok(page(items, p.limit, |m| &m.app_user_id))
    }

    async fn find_user_mapping(
        &self,
        credential: &str,
        app_user_id: &str,
    ) -> Result<Option<String>> {
        let client = self.client().await?;
        let r = row(
            &client,
            "SELECT user_id FROM user_mappings WHERE credential_id = $1 AND app_user_id = $2",
            &[&credential, &app_user_id],
        )
        .await?;
        r.map(|r| r.try_get(0)).transpose().map_err(pg)
    }

    async fn create_session(&self, s: SessionRecord) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // Expired sessions go as new ones come.
        exec(
            &tx,
            "DELETE FROM sessions WHERE expires_at < $1",
            &[&ms(s.created_at)],
        )
        .await?;
        exec(
            &tx,
            "INSERT INTO sessions (id_hash, token_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            &[&s.id_hash.as_slice(), &s.token_id, &s.csrf, &ms(s.created_at), &ms(s.expires_at)],
        )
        .await?;
        tx.commit().await.map_err(pg)
    }

    async fn find_session(
        &self,
        id_hash: [u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<(SessionRecord, TokenRecord, TenantRecord)>> {
        let client = self.client().await?;
        let r = row(
            &client,
            "SELECT k.id, k.tenant_id, k.name, k.role, k.hash, k.created_at, k.created_by, k.revoked_at,
                    t.id, t.name, t.is_operator, t.created_at, s.csrf, s.created_at, s.expires_at
             FROM sessions s JOIN tokens k ON k.id = s.token_id JOIN tenants t ON t.id = k.tenant_id
             WHERE s.id_hash = $1 AND s.expires_at > $2 AND k.revoked_at IS NULL",
            &[&id_hash.as_slice(), &ms(now)],
        )
        .await?;
        r.map(|r| {
            let token = token_from_row(&r)?;
            let session = SessionRecord {
                id_hash,
                token_id: token.id.clone(),
                csrf: r.try_get(12)?,
                created_at: r.try_get(13)?,
                expires_at: r.try_get(14)?,
            };
            Ok((session, token, tenant_from_row(&r, 8)?))
        })
        .transpose()
        .map_err(pg)
    }

    async fn delete_session(&self, id_hash: [u8; 32]) -> Result<()> {
        let client = self.client().await?;
        exec(
            &client,
            "DELETE FROM sessions WHERE id_hash = $1",
            &[&id_hash.as_slice()],
        )
        .await?;
        Ok(())
    }

    async fn add_counters(&self, deltas: Vec<CounterDelta>) -> Result<()> {
        // Summed by key first: one upsert statement may touch a row only
        // once, and rows locked in key order cannot deadlock with another
        // batch's.
        let mut sums: BTreeMap<(String, String, String), i64> = BTreeMap::new();
        for d in deltas {
            let sum = sums
                .entry((d.credential_id, d.kind, d.outcome))
                .or_insert(0);
            *sum = sum
                .checked_add(d.count as i64)
                .ok_or_else(|| StoreError::Backend("counter overflow".into()))?;
        }
        if sums.is_empty() {
            return Ok(());
        }
        let (mut credentials, mut kinds, mut outcomes, mut counts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((credential, kind, outcome), count) in sums {
            credentials.push(credential);
            kinds.push(kind);
            outcomes.push(outcome);
            counts.push(count);
        }
        let client = self.client().await?;
        // One statement: a transaction of its own.
        exec(
            &client,
            "INSERT INTO ingress_counters (credential_id, kind, outcome, count)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
             ON CONFLICT (credential_id, kind, outcome) DO UPDATE SET count = ingress_counters.count + excluded.count",
            &[&credentials, &kinds, &outcomes, &counts],
        )
        .await?;
        Ok(())
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        let client = self.client().await?;
        let rows = rows(
            &client,
            "SELECT id, state, key_check, created_at, retired_at FROM master_keys ORDER BY created_at, id",
            &[],
        )
        .await?;
        let raw = map_rows(&rows, |r| {
            Ok((
                r.try_get::<_, String>(0)?,
                r.try_get::<_, String>(1)?,
                r.try_get::<_, Vec<u8>>(2)?,
                r.try_get::<_, DateTime<Utc>>(3)?,
                r.try_get::<_, Option<DateTime<Utc>>>(4)?,
            ))
        })?;
        raw.into_iter()
            .map(|(id, state, key_check, created_at, retired_at)| {
                Ok(KeyRecord {
                    id,
                    state: KeyState::parse(&state)?,
                    key_check,
                    created_at,
                    retired_at,
                })
            })
            .collect()
    }

    async fn add_first_key(&self, key: KeyRecord) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // Replicas starting together on empty data: one of them wins.
        exec(&tx, "LOCK TABLE master_keys IN EXCLUSIVE MODE", &[]).await?;
        if row(&tx, "SELECT 1 FROM master_keys LIMIT 1", &[])
            .await?
            .is_some()
        {
            return Ok(false);
        }
        exec(
            &tx,
            "INSERT INTO master_keys (id, state, key_check, created_at) VALUES ($1, 'active', $2, $3)",
            &[&key.id, &key.key_check, &ms(key.created_at)],
        )
        .await?;
        tx.commit().await.map_err(pg)?;
        Ok(true)
    }

    async fn rotate_key(&self, from: &str, to: KeyRecord, audit: AuditEntry) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        exec(&tx, "LOCK TABLE master_keys IN EXCLUSIVE MODE", &[]).await?;
        let states = rows(&tx, "SELECT id, state FROM master_keys", &[]).await?;
        let states = map_rows(&states, |r| {
            Ok((r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?))
        })?;
        let state = |id: &str| {
            states
                .iter()
                .find(|(k, _)| k == id)
                .map(|(_, s)| s.as_str())
        };
        if states.iter().any(|(_, s)| s == "draining")
            || from == to.id
            || state(from) != Some("active")
            || state(&to.id).is_some()
        {
            return Err(StoreError::Conflict);
        }
        exec(
            &tx,
            "UPDATE master_keys SET state = 'draining' WHERE id = $1",
            &[&from],
        )
        .await?;
        exec(
            &tx,
            "INSERT INTO master_keys (id, state, key_check, created_at) VALUES ($1, 'active', $2, $3)",
            &[&to.id, &to.key_check, &ms(to.created_at)],
        )
        .await?;
        write_audit(&tx, &audit).await?;
        tx.commit().await.map_err(pg)
    }

    async fn key_usage(&self) -> Result<Vec<(String, u64)>> {
        let client = self.client().await?;
        let rows = rows(
            &client,
            "SELECT kek_id, count(*) FROM credentials GROUP BY kek_id ORDER BY kek_id",
            &[],
        )
        .await?;
        map_rows(&rows, |r| {
            Ok((r.try_get(0)?, r.try_get::<_, i64>(1)? as u64))
        })
    }

    async fn wrapped_keys(&self, kek_id: &str, limit: usize) -> Result<Vec<WrappedKey>> {
        let client = self.client().await?;
        let rows = rows(
            &client,
            "SELECT tenant_id, id, kek_id, wrapped_dek FROM credentials WHERE kek_id = $1 LIMIT $2",
            &[&kek_id, &(limit as i64)],
        )
        .await?;
        map_rows(&rows, |r| {
            Ok(WrappedKey {
                tenant_id: r.try_get(0)?,
                id: r.try_get(1)?,
                kek_id: r.try_get(2)?,
                wrapped_dek: r.try_get(3)?,
            })
        })
    }

    async fn rewrap(&self, mut items: Vec<Rewrap>) -> Result<u64> {
        // Rows locked in id order cannot deadlock with another replica's batch.
        items.sort_by(|a, b| a.id.cmp(&b.id));
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let mut targets: Vec<&str> = items.iter().map(|i| i.to_kek.as_str()).collect();
        targets.dedup();
        for t in targets {
            refuse_retired_key(&tx, t).await?;
        }
        let (ids, from, to, wrapped): (Vec<&str>, Vec<&str>, Vec<&str>, Vec<&[u8]>) = items
            .iter()
            .map(|i| {
                (
                    i.id.as_str(),
                    i.from_kek.as_str(),
                    i.to_kek.as_str(),
                    i.wrapped_dek.as_slice(),
                )
            })
            .fold(Default::default(), |mut acc, (a, b, c, d)| {
                acc.0.push(a);
                acc.1.push(b);
                acc.2.push(c);
                acc.3.push(d);
                acc
            });
        let n = exec(
            &tx,
            "UPDATE credentials AS c SET kek_id = u.to_kek, wrapped_dek = u.wrapped
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[]) AS u(id, from_kek, to_kek, wrapped)
             WHERE c.id = u.id AND c.kek_id = u.from_kek",
            &[&ids, &from, &to, &wrapped],
        )
        .await?;
        tx.commit().await.map_err(pg)?;
        Ok(n)
    }

    async fn retire_key(&self, id: &str, audit: AuditEntry) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // The row lock first: writers that checked this key (FOR SHARE) have
        // committed by the time it is granted, so the count below sees them.
        let n = exec(
            &tx,
            "UPDATE master_keys SET state = 'retired', retired_at = now() WHERE id = $1 AND state = 'draining'",
            &[&id],
        )
        .await?;
        if n == 0 {
            return Ok(false);
        }
        let used = row(
            &tx,
            "SELECT 1 FROM credentials WHERE kek_id = $1 LIMIT 1",
            &[&id],
        )
        .await?
        .is_some();
        if used {
            return Ok(false);
        }
        write_audit(&tx, &audit).await?;
        tx.commit().await.map_err(pg)?;
        Ok(true)
    }

    async fn counters(&self, credential: &str) -> Result<Vec<CounterDelta>> {
        let client = self.client().await?;
        counters(&client, credential).await
    }

    async fn get_credential_with_counters(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(CredentialRecord, Vec<CounterDelta>)>> {
        let client = self.client().await?;
        // One statement: PostgreSQL spends about as much starting and
        // ending a statement as on reading these few rows.
        let Some(r) = row(&client, &CREDENTIAL_WITH_COUNTERS_SQL, &[&tenant, &id]).await? else {
            return Ok(None);
        };
        credential_with_counters_from_row(&r, 0)
            .map(Some)
            .map_err(pg)
    }

    async fn find_token_with_credential(
        &self,
        hash: [u8; 32],
        id: &str,
    ) -> Result<Option<TokenWithCredential>> {
        let client = self.client().await?;
        // One statement where find_token and then
        // get_credential_with_counters would be two round trips, each
        // waking a backend (on a busy machine, the second wake-up is most
        // of a get's tail).
        let Some(r) = row(
            &client,
            &TOKEN_WITH_CREDENTIAL_SQL,
            &[&hash.as_slice(), &id],
        )
        .await?
        else {
            return Ok(None);
        };
        let at = TOKEN_WITH_CREDENTIAL_AT;
        let found = r.try_get::<_, Option<&str>>(at).map_err(pg)?.is_some();
        Ok(Some(TokenWithCredential {
            token: token_from_row(&r).map_err(pg)?,
            tenant: tenant_from_row(&r, 8).map_err(pg)?,
            credential: found
                .then(|| credential_with_counters_from_row(&r, at))
                .transpose()
                .map_err(pg)?,
        }))
    }

    async fn export_snapshot(
        &self,
        sink: tokio::sync::mpsc::Sender<snapshot::Chunk>,
    ) -> Result<()> {
        use snapshot::{Chunk, BATCH_ROWS, TABLES};
        let mut client = self.client().await?;
        // One snapshot for every table, while the replicas keep writing.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        for (index, table) in TABLES.iter().enumerate() {
            let sql = format!(
                "SELECT {} FROM {} ORDER BY {}",
                table.column_list(),
                table.name,
                table.order_by
            );
            let portal = tx.bind(sql.as_str(), &[]).await.map_err(pg)?;
            loop {
                let batch = tx
                    .query_portal(&portal, BATCH_ROWS as i32)
                    .await
                    .map_err(pg)?;
                if batch.is_empty() {
                    break;
                }
                let rows = batch
                    .iter()
                    .map(|r| snapshot_row(table, r))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(pg)?;
                if sink.send(Chunk::Rows { table: index, rows }).await.is_err() {
                    return Ok(());
                }
            }
        }
        tx.commit().await.map_err(pg)?;
        let _ = sink.send(Chunk::End).await;
        Ok(())
    }

    async fn import_snapshot(
        &self,
        mut source: tokio::sync::mpsc::Receiver<snapshot::Chunk>,
    ) -> Result<snapshot::CopyReport> {
        use snapshot::{check_row, Chunk, Kind, Value as V, TABLES};
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        for table in TABLES {
            let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", table.name);
            let any: bool = tx
                .query_one(sql.as_str(), &[])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(pg)?;
            if any {
                return Err(snapshot::not_empty(table.name));
            }
        }
        let mut report = snapshot::CopyReport::new();
        loop {
            let (index, rows) = match source.recv().await {
                Some(Chunk::Rows { table, rows }) => (table, rows),
                Some(Chunk::End) => break,
                // Dropping `tx` rolls every row back.
                None => return Err(snapshot::cut_short()),
            };
            let table = TABLES
                .get(index)
                .ok_or_else(|| StoreError::Backend(format!("no table number {index}")))?;
            // Multi-row inserts, under the protocol's 65,535 parameters.
            let per_statement = (60_000 / table.columns.len()).max(1);
            for part in rows.chunks(per_statement) {
                let mut args = Args::default();
                let mut tuples = Vec::with_capacity(part.len());
                for row in part {
                    check_row(table, row)?;
                    let mut placeholders = Vec::with_capacity(row.len());
                    for ((_, kind), value) in table.columns.iter().zip(row) {
                        placeholders.push(match (kind, value.clone()) {
                            (Kind::OptText, V::Null) => args.bind(None::<String>),
                            (Kind::OptTime, V::Null) => args.bind(None::<DateTime<Utc>>),
                            (_, V::Text(t)) => args.bind(t),
                            (_, V::Bool(b)) => args.bind(b),
                            (_, V::Int(n)) => args.bind(n),
                            (_, V::Time(t)) => args.bind(from_millis(t)?),
                            (_, V::Bytes(b)) => args.bind(b),
                            (_, V::Json(j)) => args.bind(j),
                            (_, V::Null) => unreachable!("check_row refuses a null here"),
                        });
                    }
                    tuples.push(format!("({})", placeholders.join(", ")));
                }
                let sql = format!(
                    "INSERT INTO {} ({}) VALUES {}",
                    table.name,
                    table.column_list(),
                    tuples.join(", ")
                );
                tx.execute(sql.as_str(), &args.refs())
                    .await
                    .map_err(|e| match pg(e) {
                        StoreError::Backend(m) => {
                            StoreError::Backend(format!("{}: {m}", table.name))
                        }
                        other => other,
                    })?;
            }
            *report.entry(table.name).or_default() += rows.len() as u64;
        }
        tx.commit().await.map_err(pg)?;
        Ok(report)
    }
}

/// The jobs of a group-commit queue, shared by its writers.
struct Queue<T> {
    jobs: Mutex<mpsc::Receiver<T>>,
    /// Writers with a batch in flight.
    busy: AtomicUsize,
    /// Signalled each time a writer's batch ends.
    ended: Notify,
}

/// A group-commit queue of `capacity` jobs, drained by `writers` tasks
/// running `writer`, each on the pool.
fn start_writers<T, W, F>(
    pool: &Pool,
    capacity: usize,
    writers: usize,
    writer: W,
) -> mpsc::Sender<T>
where
    T: Send + 'static,
    W: Fn(Pool, Arc<Queue<T>>) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(capacity);
    let queue = Arc::new(Queue {
        jobs: Mutex::new(rx),
        busy: AtomicUsize::new(0),
        ended: Notify::new(),
    });
    for _ in 0..writers {
        tokio::spawn(writer(pool.clone(), queue.clone()));
    }
    tx
}

/// The next job queued and every one queued behind it, up to `max`, taken
/// by a writer while its last batch (or another writer's) commits; `None`
/// once the queue is closed. While another writer's batch is in flight,
/// the batch is handed out only once it holds `overlap` jobs or that batch
/// has ended. The batch counts as in flight until its [`InFlight`] is
/// dropped.
async fn next_batch<T>(
    queue: &Queue<T>,
    max: usize,
    overlap: usize,
) -> Option<(Vec<T>, InFlight<'_, T>)> {
    let mut rx = queue.jobs.lock().await;
    let mut batch = vec![rx.recv().await?];
    loop {
        while batch.len() < max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Made before `busy` is read, so an end in between still wakes it.
        let ended = queue.ended.notified();
        if batch.len() >= overlap.min(max) || queue.busy.load(Ordering::Acquire) == 0 {
            break;
        }
        tokio::select! {
            _ = ended => {}
            job = rx.recv() => match job {
                Some(job) => batch.push(job),
                None => break,
            },
        }
    }
    queue.busy.fetch_add(1, Ordering::AcqRel);
    Some((batch, InFlight(queue)))
}

/// A batch [`next_batch`] handed out, in flight until dropped (however its
/// writer ends it).
struct InFlight<'a, T>(&'a Queue<T>);

impl<T> Drop for InFlight<'_, T> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

/// The connection the ingress writers share, taken from the pool when
/// first needed and again once it is found closed (by one writer: the
/// other waits for it).
#[derive(Default)]
struct SharedClient(Mutex<Option<Arc<Object>>>);

impl SharedClient {
    async fn get(&self, pool: &Pool) -> Result<Arc<Object>> {
        let mut held = self.0.lock().await;
        if let Some(client) = held.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = Arc::new(pool.get().await.map_err(|e| backend(&e))?);
        *held = Some(client.clone());
        Ok(client)
    }
}

/// Group commit of ingress: takes every event queued (up to
/// [`EVENT_BATCH`]) and stores them with one statement ([`insert_events`]), one
/// transaction and so one WAL flush; each caller hears whether its event was
/// new only after that commit. If the batch fails (one bad row fails the
/// statement), each event is retried alone ([`event_alone`]) so only the
/// bad one fails.
///
/// The [`EVENT_WRITERS`] writers send their statements on one connection
/// (`client`), so they are pipelined: each is its own transaction, run in
/// the order sent, and its rows come back only after its commit (the
/// connection's ready-for-query follows the commit). A batch is sent while
/// another is in flight only once it holds [`EVENT_OVERLAP`] events.
async fn event_writer(pool: Pool, queue: Arc<Queue<EventJob>>, client: Arc<SharedClient>) {
    while let Some((mut batch, in_flight)) = next_batch(&queue, EVENT_BATCH, EVENT_OVERLAP).await {
        let events: Vec<&NewEvent> = batch.iter().map(|(e, _)| e).collect();
        let (stored, lost) = match client.get(&pool).await {
            Ok(c) => {
                let stored = insert_events(&c, &events).await;
                (stored, c.is_closed())
            }
            Err(e) => (Err(e), false),
        };
        drop((events, in_flight));
        match stored {
            Ok(mut outcomes) => {
                for (e, done) in batch {
                    let outcome = outcomes
                        .remove(&e.event.id)
                        .unwrap_or(EventStored::Duplicate);
                    let _ = done.send(Ok(outcome));
                }
            }
            // Alone and not for want of a connection: its own failure.
            Err(e) if batch.len() == 1 && !lost => {
                let (_, done) = batch.pop().expect("one job");
                let _ = done.send(Err(e));
            }
            Err(_) => {
                // Each on a task of its own: the writer goes on with the
                // next batch meanwhile, however long the retries take.
                for job in batch {
                    tokio::spawn(event_alone(pool.clone(), job));
                }
            }
        }
    }
}

/// One event of a failed batch, alone ([`insert_events`]), answered to its
/// caller.
async fn event_alone(pool: Pool, (event, done): EventJob) {
    let outcome = match pool.get().await {
        Ok(client) => insert_events(&client, &[&event]).await,
        Err(e) => Err(backend(&e)),
    }
    .map(|mut o| o.remove(&event.event.id).unwrap_or(EventStored::Duplicate));
    let _ = done.send(outcome);
}

/// Inserts `events` in one statement, its own transaction: each only while
/// its credential is at the version it names, and not when its delivery id
/// is already stored or repeated in the batch; the user mapping is looked up
/// in the same statement. Returns each event's outcome by event id, durable
/// once it returns: the rows are collected whole, and the stream ends only
/// with the ready-for-query that follows the commit, so nothing is answered
/// from a row read before it.
///
/// The batch goes in as one array per column, so the statement's text is
/// the same whatever the batch's size: it is parsed and planned once per
/// connection (a `VALUES` list of one tuple per event would be a new
/// statement, parsed and planned again, for every batch).
async fn insert_events(
    client: &Object,
    events: &[&NewEvent],
) -> Result<HashMap<String, EventStored>> {
    let column = |f: fn(&NewEvent) -> &str| events.iter().map(|n| f(n)).collect::<Vec<_>>();
    let optional =
        |f: fn(&NewEvent) -> Option<&str>| events.iter().map(|n| f(n)).collect::<Vec<_>>();
    let ids = column(|n| &n.event.id);
    let tenants = column(|n| &n.event.tenant_id);
    let credentials = column(|n| &n.event.credential_id);
    let kinds = column(|n| &n.event.kind);
    let event_types = column(|n| &n.event.event_type);
    let app_users = optional(|n| n.event.app_user_id.as_deref());
    let users = optional(|n| n.event.user_id.as_deref());
    let deliveries = optional(|n| n.event.delivery_id.as_deref());
    let valid: Vec<bool> = events.iter().map(|n| n.event.valid_request).collect();
    let payloads: Vec<Json<&serde_json::Value>> =
        events.iter().map(|n| Json(&n.event.payload)).collect();
    let received: Vec<DateTime<Utc>> = events.iter().map(|n| ms(n.event.received_at)).collect();
    let versions: Vec<Option<i64>> = events.iter().map(|n| n.credential_version).collect();
    let map_user: Vec<bool> = events.iter().map(|n| n.map_user).collect();
    let params: [&(dyn ToSql + Sync); 13] = [
        &ids,
        &tenants,
        &credentials,
        &kinds,
        &valid,
        &app_users,
        &users,
        &event_types,
        &deliveries,
        &payloads,
        &received,
        &versions,
        &map_user,
    ];
    let mut out = HashMap::with_capacity(events.len());
    for r in rows(client, INSERT_EVENTS_SQL, &params).await? {
        let id: String = r.try_get(0).map_err(pg)?;
        let current: bool = r.try_get(1).map_err(pg)?;
        let stored: bool = r.try_get(2).map_err(pg)?;
        let outcome = if !current {
            EventStored::CredentialChanged
        } else if stored {
            EventStored::Stored {
                user_id: r.try_get(3).map_err(pg)?,
            }
        } else {
            EventStored::Duplicate
        };
        out.insert(id, outcome);
    }
    Ok(out)
}

const INSERT_EVENTS_SQL: &str = "WITH v AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::boolean[],
                             $6::text[], $7::text[], $8::text[], $9::text[], $10::jsonb[],
                             $11::timestamptz[], $12::bigint[], $13::boolean[])
            AS u (id, tenant_id, credential_id, kind, valid_request, app_user_id, user_id,
                  event_type, delivery_id, payload, received_at, credential_version, map_user)
     ),
     ok AS (
         SELECT v.* FROM v
         WHERE v.credential_version IS NULL
            OR EXISTS (SELECT 1 FROM credentials c
                       WHERE c.id = v.credential_id AND c.version = v.credential_version)
     ),
     ins AS (
         INSERT INTO events (id, tenant_id, credential_id, kind, valid_request, app_user_id,
                             user_id, event_type, delivery_id, payload, received_at)
         SELECT ok.id, ok.tenant_id, ok.credential_id, ok.kind, ok.valid_request, ok.app_user_id,
                COALESCE(ok.user_id, m.user_id), ok.event_type, ok.delivery_id, ok.payload,
                ok.received_at
         FROM ok LEFT JOIN user_mappings m
           ON ok.map_user AND ok.user_id IS NULL
          AND m.credential_id = ok.credential_id AND m.app_user_id = ok.app_user_id
         ON CONFLICT (credential_id, kind, delivery_id) WHERE delivery_id IS NOT NULL DO NOTHING
         RETURNING id, user_id
     )
     SELECT v.id, ok.id IS NOT NULL, ins.id IS NOT NULL, ins.user_id
     FROM v LEFT JOIN ok ON ok.id = v.id LEFT JOIN ins ON ins.id = v.id";

fn from_millis(t: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(t)
        .ok_or_else(|| StoreError::Backend(format!("timestamp {t} ms is out of range")))
}

fn snapshot_row(
    table: &snapshot::Table,
    r: &Row,
) -> std::result::Result<Vec<snapshot::Value>, tokio_postgres::Error> {
    use snapshot::{Kind, Value as V};
    let time = |t: DateTime<Utc>| V::Time(t.timestamp_millis());
    let mut out = Vec::with_capacity(table.columns.len());
    for (i, (_, kind)) in table.columns.iter().enumerate() {
        out.push(match kind {
            Kind::Text => V::Text(r.try_get(i)?),
            Kind::OptText => r.try_get::<_, Option<String>>(i)?.map_or(V::Null, V::Text),
            Kind::Bool => V::Bool(r.try_get(i)?),
            Kind::Int => V::Int(r.try_get(i)?),
            Kind::Time => time(r.try_get(i)?),
            Kind::OptTime => r
                .try_get::<_, Option<DateTime<Utc>>>(i)?
                .map_or(V::Null, time),
            Kind::Bytes => V::Bytes(r.try_get(i)?),
            Kind::Json => V::Json(r.try_get(i)?),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(capacity: usize) -> (mpsc::Sender<u32>, Queue<u32>) {
        let (tx, rx) = mpsc::channel(capacity);
        let queue = Queue {
            jobs: Mutex::new(rx),
            busy: AtomicUsize::new(0),
            ended: Notify::new(),
        };
        (tx, queue)
    }

    /// Whether `batch` is still waiting after a while (it cannot finish
    /// without a new job or a batch's end, so a wrong answer is never a
    /// matter of timing).
    async fn still_waiting<F: std::future::Future + Unpin>(batch: &mut F) -> bool {
        tokio::time::timeout(Duration::from_millis(50), batch)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn with_a_batch_in_flight_the_next_waits_for_enough_jobs() {
        let (tx, queue) = queue(16);
        tx.send(1).await.unwrap();
        // Nothing in flight: one job is a batch.
        let (first, _in_flight) = next_batch(&queue, 8, 3).await.unwrap();
        assert_eq!(first, vec![1]);

        tx.send(2).await.unwrap();
        let mut next = Box::pin(next_batch(&queue, 8, 3));
        assert!(still_waiting(&mut next).await, "sent with 1 of 3 jobs");
        tx.send(3).await.unwrap();
        assert!(still_waiting(&mut next).await, "sent with 2 of 3 jobs");
        tx.send(4).await.unwrap();
        let (second, _) = next.await.unwrap();
        assert_eq!(second, vec![2, 3, 4]);
    }

    #[tokio::test]
    async fn the_end_of_the_batch_in_flight_sends_the_next_at_once() {
        let (tx, queue) = queue(16);
        tx.send(1).await.unwrap();
        let (_, in_flight) = next_batch(&queue, 8, 3).await.unwrap();
        tx.send(2).await.unwrap();
        let mut next = Box::pin(next_batch(&queue, 8, 3));
        assert!(still_waiting(&mut next).await);
        drop(in_flight);
        let (second, in_flight) = next.await.unwrap();
        assert_eq!(second, vec![2]);
        assert_eq!(queue.busy.load(Ordering::Acquire), 1);
        drop(in_flight);
        assert_eq!(queue.busy.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_batch_never_holds_more_than_its_most() {
        let (tx, queue) = queue(16);
        for n in 0..5 {
            tx.send(n).await.unwrap();
        }
        let (first, _) = next_batch(&queue, 3, 1).await.unwrap();
        assert_eq!(first, vec![0, 1, 2]);
        drop(tx);
        let (rest, _) = next_batch(&queue, 3, 1).await.unwrap();
        assert_eq!(rest, vec![3, 4]);
        assert!(next_batch(&queue, 3, 1).await.is_none(), "closed and empty");
    }

    #[test]
    fn the_column_count_counts_the_credential_columns() {
        assert_eq!(
            CREDENTIAL_COLUMNS.split(',').count(),
            CREDENTIAL_COLUMN_COUNT
        );
    }

    #[test]
    fn like_escape_quotes_wildcards_and_the_escape() {
        assert_eq!(like_escape(r"50%_off\now"), r"50\%\_off\\now");
        assert_eq!(like_escape("plain"), "plain");
    }

    #[test]
    fn schema_names_need_no_quoting() {
        assert!(check_schema_name("t_0a9").is_ok());
        assert!(check_schema_name("_x").is_ok());
        for bad in ["", "T", "9a", "a-b", "a b", "a\"b", &"a".repeat(64)] {
            assert!(check_schema_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_keep_whole_milliseconds() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(
            ms(t),
            DateTime::from_timestamp(1_700_000_000, 123_000_000).unwrap()
        );
    }
}
