//! Operator commands that work on a database rather than through a running
//! server: `latchkey copy` (a whole installation from one backend to
//! another). They never need the master key: rows move sealed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use storage::snapshot::CopyReport;
use storage::{PostgresStore, SqliteStore, Store};

/// A database named on the command line: `sqlite://PATH`, where PATH is a
/// Latchkey data dir or a `.db` file, or a `postgres://` URL with an
/// optional schema.
#[derive(Debug, Clone)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres { url: String, schema: Option<String> },
}

impl Location {
    pub fn parse(url: &str, schema: Option<&str>) -> anyhow::Result<Location> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Location::Postgres {
                url: url.to_string(),
                schema: schema.map(str::to_string),
            });
        }
        let Some(path) = url.strip_prefix("sqlite://") else {
            bail!("{url:?} is not a database URL: use sqlite://PATH (a data dir or a .db file) or postgres://…");
        };
        if schema.is_some() {
            bail!("a schema applies only to PostgreSQL, not to {url}");
        }
        if path.is_empty() {
            bail!("sqlite:// needs a path: sqlite://./latchkey-data or sqlite:///var/lib/latchkey/latchkey.db");
        }
        let path = PathBuf::from(path);
        let file = if path.extension().is_some_and(|e| e == "db") || path.is_file() {
            path
        } else {
            path.join("latchkey.db")
        };
        Ok(Location::Sqlite(file))
    }

    /// Opens the store (migrating it). A source must exist already; a
    /// target SQLite file is created, with its folder, if missing.
    async fn open(&self, must_exist: bool) -> anyhow::Result<Arc<dyn Store>> {
        match self {
            Location::Sqlite(file) => {
                if must_exist && !file.is_file() {
                    bail!("there is no Latchkey database at {}", file.display());
                }
                if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                    create_private_dir(dir)?;
                }
                let store = SqliteStore::open(file)
                    .with_context(|| format!("cannot open {}", file.display()))?;
                Ok(Arc::new(store))
            }
            Location::Postgres { url, schema } => {
                let store = match schema {
                    Some(s) => PostgresStore::connect_in_schema(url, s).await,
                    None => PostgresStore::connect(url).await,
                }
                .context("cannot open the PostgreSQL database")?;
                Ok(Arc::new(store))
            }
        }
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// What a copy did: rows per table, and the fingerprint of the master key
/// the copied data is sealed with (the target needs that same key).
#[derive(Debug)]
pub struct Copied {
    pub rows: CopyReport,
    pub key_id: Option<String>,
}

/// Copies every row of `from` into `to` (migrated first, and required to be
/// empty), reading one consistent snapshot of `from` (which may keep
/// serving) and writing `to` in one transaction: all of it or nothing.
pub async fn copy(from: &Location, to: &Location) -> anyhow::Result<Copied> {
    let source = from.open(true).await.context("the source")?;
    let target = to.open(false).await.context("the target")?;
    let rows = storage::snapshot::copy(&*source, &*target)
        .await
        .context("the copy failed and wrote nothing")?;
    let key_id = target
        .meta_get(crate::KEY_ID)
        .await?
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    Ok(Copied { rows, key_id })
}
