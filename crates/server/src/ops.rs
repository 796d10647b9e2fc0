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
    let key_id = active_key_id(&*target).await?;
    Ok(Copied { rows, key_id })
}

/// Writes a consistent online snapshot of `from` to `file`, a new SQLite
/// database of one file (mode 0600) that `latchkey serve --data-dir` or
/// `latchkey restore` can use. It holds the data sealed, not the master key:
/// keep the key's own backup apart. The file appears only once complete.
pub async fn backup(from: &Location, file: &Path) -> anyhow::Result<Copied> {
    if file.exists() {
        bail!(
            "{} exists already: a backup never overwrites a file",
            file.display()
        );
    }
    let source = from.open(true).await.context("the source")?;
    let dir = match file.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .context("the backup file needs a name")?
        .to_string_lossy();
    let partial = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let result = write_backup(&*source, &partial, file).await;
    if result.is_err() {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = partial.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
    result
}

async fn write_backup(source: &dyn Store, partial: &Path, file: &Path) -> anyhow::Result<Copied> {
    create_private_file(partial)?;
    let target = SqliteStore::open(partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let rows = storage::snapshot::copy(source, &target)
        .await
        .context("the backup failed")?;
    let key_id = active_key_id(&target).await?;
    tokio::task::spawn_blocking(move || target.close())
        .await?
        .context("cannot close the backup file")?;
    std::fs::File::open(partial)?.sync_all()?;
    std::fs::rename(partial, file)
        .with_context(|| format!("cannot move the backup to {}", file.display()))?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(Copied { rows, key_id })
}

/// Creates an empty file only its owner can read, so the database SQLite
/// then writes into it is never readable by others, not even briefly.
fn create_private_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(())
}

/// Brings a backup file back into `to`, which must be new or empty (a data
/// dir, a `.db` file or PostgreSQL), in one transaction.
pub async fn restore(file: &Path, to: &Location) -> anyhow::Result<Copied> {
    if !file.is_file() {
        bail!("there is no backup file at {}", file.display());
    }
    copy(&Location::Sqlite(file.to_path_buf()), to).await
}

/// The fingerprint of the master key that data needs (for the reports):
/// the active key, or the one key of data from before key rotation.
async fn active_key_id(store: &dyn Store) -> anyhow::Result<Option<String>> {
    let keys = store.list_keys().await?;
    if let Some(k) = keys.iter().find(|k| k.state == storage::KeyState::Active) {
        return Ok(Some(k.id.clone()));
    }
    Ok(store
        .meta_get(crate::KEY_ID)
        .await?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}
