//! Latchkey's server: start-up (data dir, master key, migrations, first
//! tenant), the application layer ([`app`]) and the HTTP edge ([`http`]).

pub mod app;
pub mod http;
pub mod ops;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use crypto::KeyRing;
use secrecy::SecretString;
use storage::{PostgresStore, SqliteStore, Store};

pub use app::App;
pub use crypto::KeySource;

/// Most connections a replica opens to PostgreSQL unless told otherwise.
pub const DEFAULT_DATABASE_POOL_SIZE: usize = PostgresStore::DEFAULT_POOL_SIZE;
/// The fewest connections a replica's PostgreSQL pool can work with.
pub const MIN_DATABASE_POOL_SIZE: usize = PostgresStore::MIN_POOL_SIZE;

/// How `latchkey serve` runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Base of the callback URLs; default `http://{listen}`.
    pub public_url: Option<String>,
    /// `LATCHKEY_MASTER_KEY`, which overrides the key file.
    pub master_key: Option<SecretString>,
    /// Hosts, addresses and networks outbound calls may reach beyond the
    /// catalog's declared hosts, private and loopback ones included.
    pub allow_outbound: Vec<String>,
    /// Time limit of each outbound call (token validation).
    pub outbound_timeout: Duration,
    /// `postgres://…` to share one PostgreSQL between replicas; `None` for
    /// the embedded SQLite in the data dir.
    pub database_url: Option<String>,
    /// The PostgreSQL schema to live in (created if missing); `None` for the
    /// connection's default.
    pub database_schema: Option<String>,
    /// Most connections this replica opens to PostgreSQL.
    pub database_pool_size: usize,
    /// Failed authentications an address may make per minute before it is
    /// refused (429) for the rest of that minute; 0 turns it off.
    pub auth_failure_limit: u32,
    /// Deliveries per second each credential may receive (bursts of twice
    /// that); 0 turns it off.
    pub ingress_limit: u32,
}

impl Config {
    /// The defaults of `latchkey serve`, over a data dir.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Config {
        Config {
            listen,
            data_dir,
            public_url: None,
            master_key: None,
            allow_outbound: Vec::new(),
            outbound_timeout: Duration::from_secs(10),
            database_url: None,
            database_schema: None,
            database_pool_size: DEFAULT_DATABASE_POOL_SIZE,
            auth_failure_limit: app::DEFAULT_AUTH_FAILURES,
            ingress_limit: app::DEFAULT_INGRESS_PER_SECOND,
        }
    }
}

/// What start-up did, for the banner. The admin token is in here once, on
/// the first start, and is printed by the caller; it is never logged.
#[derive(Debug)]
pub struct StartReport {
    pub addr: SocketAddr,
    pub public_url: String,
    pub data_dir: PathBuf,
    pub key_id: String,
    pub key_source: KeySource,
    pub key_file: PathBuf,
    pub first_admin_token: Option<SecretString>,
    pub ready_in: Duration,
}

const KEY_CHECK: &str = "kek_check";
const KEY_ID: &str = "kek_id";

/// Opens the data dir and storage, checks the master key against the data,
/// creates the first tenant if there is none, and binds the listener. The
/// returned future serves until `shutdown` completes, then drains.
pub async fn start(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    StartReport,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let started = Instant::now();
    prepare_data_dir(&config.data_dir)?;
    let key_file = config.data_dir.join("master.key");
    let store = open_store(&config).await?;
    let keys = open_keys(&config, &key_file, store.as_ref()).await?;
    let (kek, key_source) = (keys.0.active(), keys.1);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let public_url = public_url.trim_end_matches('/').to_string();
    let key_id = kek.id().to_string();
    let keys = keys.0;
    let policy =
        services::validate::OutboundPolicy::new(&config.allow_outbound, config.outbound_timeout)
            .map_err(anyhow::Error::msg)?;
    let validator = services::validate::Validator::new(policy).map_err(anyhow::Error::msg)?;
    let mut app = App::new(
        store,
        keys,
        domain::Catalog::builtin()?,
        public_url.clone(),
        validator,
    );
    app.auth_failures =
        app::limits::FailureLimiter::new(config.auth_failure_limit, Duration::from_secs(60));
    app.ingress_limit = app::limits::IngressLimiter::new(config.ingress_limit);
    let app = Arc::new(app);
    let first_admin_token = app
        .bootstrap()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .map(|(_, token)| token);
    let flusher = tokio::spawn({
        let app = app.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                app.flush_counters().await;
                app.ingress_limit.sweep();
                if let Err(e) = app.maintain_keys().await {
                    tracing::error!(error = %e, "master key rotation step failed; retrying");
                }
            }
        }
    });
    let router = http::router(app.clone());
    let serving = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .into_future();
    let serve = async move {
        let result = serving.await;
        flusher.abort();
        app.flush_counters().await;
        result
    };
    let report = StartReport {
        addr,
        public_url,
        data_dir: config.data_dir,
        key_id,
        key_source,
        key_file,
        first_admin_token,
        ready_in: started.elapsed(),
    };
    Ok((report, serve))
}

/// Loads the key ring and checks it against the keys the data records: the
/// ring must hold the active key (which must open its key check) and every
/// key a rotation is still moving rows away from. On empty data the ring's
/// first key becomes the active one. Data from before key rotation (one
/// key check in `meta`) is taken over as it is.
async fn open_keys(
    config: &Config,
    key_file: &Path,
    store: &dyn Store,
) -> anyhow::Result<(app::Keys, KeySource)> {
    let mut recorded = store.list_keys().await?;
    if recorded.is_empty() {
        if let Some(check) = store.meta_get(KEY_CHECK).await? {
            let id = store
                .meta_get(KEY_ID)
                .await?
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            recorded = vec![storage::KeyRecord {
                id,
                state: storage::KeyState::Active,
                key_check: check,
                created_at: chrono::Utc::now(),
                retired_at: None,
            }];
        }
    }
    let active_id = recorded
        .iter()
        .find(|k| k.state == storage::KeyState::Active)
        .map(|k| k.id.clone());
    if active_id.is_some() && config.master_key.is_none() && !key_file.exists() {
        bail!(
            "no master key: the data in {} was sealed with key {}, and neither LATCHKEY_MASTER_KEY nor {} is there. \
             Restore the key file from your backup or set LATCHKEY_MASTER_KEY.",
            config.data_dir.display(),
            active_id.as_deref().unwrap_or("?"),
            key_file.display()
        );
    }
    let (ring, source) = KeyRing::load_or_create(config.master_key.as_ref(), key_file)?;
    let key_file = (source != KeySource::Environment).then(|| key_file.to_path_buf());
    let held = || {
        ring.keys()
            .iter()
            .map(|k| k.id())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(active_id) = active_id else {
        if store.has_credentials().await? {
            bail!("the database has credentials but no key check; refusing to guess which key sealed them");
        }
        let first = ring.keys()[0].clone();
        let record = storage::KeyRecord {
            id: first.id().to_string(),
            state: storage::KeyState::Active,
            key_check: first.seal_key_check()?,
            created_at: chrono::Utc::now(),
            retired_at: None,
        };
        if store.add_first_key(record).await? {
            return Ok((app::Keys::new(ring, first, key_file), source));
        }
        // Another replica recorded its key first: check against that.
        return Box::pin(open_keys(
            config,
            key_file.as_deref().unwrap_or(Path::new("")),
            store,
        ))
        .await
        .map(|(k, _)| (k, source));
    };
    let active_record = recorded
        .iter()
        .find(|k| k.id == active_id)
        .expect("the active key is recorded");
    let active = match ring.get(&active_id) {
        Some(k) if k.opens_key_check(&active_record.key_check) => k.clone(),
        _ => bail!(
            "the master key {} does not match the data in {}, which was sealed with key {}. \
             Start with the key this data was written with; nothing was changed.",
            held(),
            config.data_dir.display(),
            active_id
        ),
    };
    if store.list_keys().await?.is_empty() {
        // Data from before key rotation: record its one key.
        store.add_first_key(active_record.clone()).await?;
    }
    for k in recorded
        .iter()
        .filter(|k| k.state == storage::KeyState::Draining)
    {
        if ring.get(&k.id).is_none() {
            bail!(
                "the data still uses master key {} (a rotation to {} is re-wrapping its credentials), \
                 which is not in the key ring ({}). Add it back to the key file or LATCHKEY_MASTER_KEY; \
                 it is retired by itself once nothing uses it.",
                k.id,
                active_id,
                held()
            );
        }
    }
    for k in recorded
        .iter()
        .filter(|k| k.state == storage::KeyState::Retired)
    {
        if ring.get(&k.id).is_some() {
            // Dropped from memory and the key file by the first key step.
            tracing::warn!(key = %k.id, "the key ring holds a retired master key; nothing uses it, and it is removed");
        }
    }
    Ok((app::Keys::new(ring, active, key_file), source))
}

/// The storage `config` names: PostgreSQL for `postgres://` URLs, else the
/// embedded SQLite file in the data dir.
async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match config.database_url.as_deref() {
        None => {
            let path = config.data_dir.join("latchkey.db");
            let store = SqliteStore::open(&path).with_context(|| {
                format!("cannot open the database in {}", config.data_dir.display())
            })?;
            Ok(Arc::new(store))
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = PostgresStore::open_unmigrated_with_pool(
                url,
                config.database_schema.as_deref(),
                config.database_pool_size,
            )
            .context("cannot open the PostgreSQL database")?;
            store
                .migrate()
                .await
                .context("cannot open the PostgreSQL database")?;
            Ok(Arc::new(store))
        }
        Some(_) => {
            bail!("--database-url must be a postgres:// URL (leave it out for the embedded SQLite)")
        }
    }
}

fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// `latchkey migrate`: every migration this build knows and whether it is
/// applied, after applying the pending ones (under the store's migration
/// lock) when `apply` is set. The second list is what this call applied.
pub async fn migrate(
    url: &str,
    schema: Option<&str>,
    apply: bool,
) -> anyhow::Result<(Vec<(i32, bool)>, Vec<i32>)> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("--database-url must be a postgres:// URL (SQLite applies its migrations at start)");
    }
    let store = PostgresStore::open_unmigrated(url, schema)
        .context("cannot open the PostgreSQL database")?;
    let applied = if apply {
        store
            .migrate()
            .await
            .context("cannot apply the migrations")?
    } else {
        Vec::new()
    };
    let status = store
        .migration_status()
        .await
        .context("cannot read the migration status")?;
    Ok((status, applied))
}
