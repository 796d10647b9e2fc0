//! Master keys: the ring this server holds, which key the data says is
//! active, and rotation.
//!
//! Rotation never re-encrypts a secret. Each credential's data key stays the
//! same; only its wrapping moves from the old master key to the new one, row
//! by row, while the server keeps serving:
//!
//! 1. `rotate` adds the new key to the key file (or takes one the operator
//!    already gave every replica), then records it as active and the old key
//!    as draining in one transaction. From then on new data keys are wrapped
//!    by the new key.
//! 2. Every server, once a second, reads the key states (so replicas follow
//!    the active key) and re-wraps a few batches of rows of a draining key.
//!    Each row changes only if it is still wrapped by the old key, so
//!    replicas working at once, or a secret change racing a re-wrap, cannot
//!    leave a row that its `kek_id` does not open.
//! 3. When no row uses the draining key, it is retired, in a transaction
//!    that writes wrapped by that key wait for; a write that loses the race
//!    is refused and re-wrapped with the active key. A retired key leaves
//!    this server's memory and its key file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crypto::{DataKey, KeyRing, MasterKey};
use domain::FieldError;
use storage::{AuditEntry, KeyRecord, KeyState, Rewrap, StoreError};

use super::{now, App, AppError, AppResult, Principal};

/// Rows re-wrapped per transaction.
const REWRAP_BATCH: usize = 256;
/// Time one tick may spend re-wrapping, so rotation never crowds out requests.
const REWRAP_SLICE: Duration = Duration::from_millis(300);
/// How long a retired key stays in memory, for reads that began before it
/// was retired.
const RETIRED_GRACE: Duration = Duration::from_secs(5);

/// The keys this server holds and the one it wraps new data keys with.
pub struct Keys {
    held: RwLock<Held>,
    /// The key file these keys came from, which rotation rewrites; `None`
    /// when they came from `LATCHKEY_MASTER_KEY`.
    pub key_file: Option<PathBuf>,
    /// Retired keys still in memory, and since when they were seen retired.
    retiring: Mutex<HashMap<String, Instant>>,
    /// Active key ids this server was told about but does not hold (logged once).
    missing: Mutex<Option<String>>,
}

struct Held {
    ring: KeyRing,
    active: Arc<MasterKey>,
}

impl Keys {
    pub fn new(ring: KeyRing, active: Arc<MasterKey>, key_file: Option<PathBuf>) -> Keys {
        Keys {
            held: RwLock::new(Held { ring, active }),
            key_file,
            retiring: Mutex::new(HashMap::new()),
            missing: Mutex::new(None),
        }
    }

    /// A ring of one key, active (tests and tools).
    pub fn single(key: MasterKey) -> Keys {
        let key = Arc::new(key);
        Keys::new(KeyRing::new(vec![key.clone()]), key, None)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.held.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Held> {
        self.held.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The key that wraps new data keys.
    pub fn active(&self) -> Arc<MasterKey> {
        self.read().active.clone()
    }

    pub fn get(&self, id: &str) -> Option<Arc<MasterKey>> {
        self.read().ring.get(id).cloned()
    }

    pub fn held_ids(&self) -> Vec<String> {
        self.read()
            .ring
            .keys()
            .iter()
            .map(|k| k.id().to_string())
            .collect()
    }

    /// Opens a credential's data key with the master key its row names.
    pub fn unwrap(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        tenant: &str,
        credential: &str,
    ) -> AppResult<DataKey> {
        let key = self.get(kek_id).ok_or_else(|| {
            AppError::Internal(anyhow::anyhow!(
                "credential {credential} is wrapped by master key {kek_id}, which this server does not hold; \
                 add it to the key file or LATCHKEY_MASTER_KEY"
            ))
        })?;
        Ok(key.unwrap_data_key(wrapped, tenant, credential)?)
    }
}

/// What `GET /v1/keys` shows.
#[derive(Debug, Clone)]
pub struct KeyStatus {
    pub active: String,
    pub keys: Vec<KeyInfo>,
    /// Set while a rotation is re-wrapping.
    pub rotation: Option<RotationProgress>,
}

#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub id: String,
    pub state: &'static str,
    /// Credentials whose data key this key wraps.
    pub credentials: u64,
    /// Whether the server that answered holds this key.
    pub held_here: bool,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct RotationProgress {
    pub from: String,
    pub to: String,
    /// Credentials still wrapped by `from`.
    pub remaining: u64,
    /// Credentials wrapped by `to` (re-wrapped or created since).
    pub done: u64,
}

impl App {
    fn require_operator_admin(&self, p: &Principal) -> AppResult<()> {
        const WHO: &str = "Only an admin of the operator tenant manages master keys.";
        p.require(domain::Role::Admin, WHO)?;
        if !p.tenant_is_operator {
            return Err(AppError::Forbidden(WHO));
        }
        Ok(())
    }

    /// Every key the data knows, what uses it, and the rotation's progress.
    pub async fn key_status(&self, p: &Principal) -> AppResult<KeyStatus> {
        self.require_operator_admin(p)?;
        self.read_key_status().await
    }

    async fn read_key_status(&self) -> AppResult<KeyStatus> {
        let records = self.store.list_keys().await?;
        let usage: HashMap<String, u64> = self.store.key_usage().await?.into_iter().collect();
        let held = self.keys.held_ids();
        let count = |id: &str| usage.get(id).copied().unwrap_or(0);
        let active = records
            .iter()
            .find(|k| k.state == KeyState::Active)
            .map(|k| k.id.clone())
            .unwrap_or_else(|| self.keys.active().id().to_string());
        let rotation = records
            .iter()
            .find(|k| k.state == KeyState::Draining)
            .map(|k| RotationProgress {
                from: k.id.clone(),
                to: active.clone(),
                remaining: count(&k.id),
                done: count(&active),
            });
        let keys = records
            .iter()
            .map(|k| KeyInfo {
                id: k.id.clone(),
                state: k.state.as_str(),
                credentials: count(&k.id),
                held_here: held.contains(&k.id),
                created_at: k.created_at,
                retired_at: k.retired_at,
            })
            .collect();
        Ok(KeyStatus {
            active,
            keys,
            rotation,
        })
    }

    /// Makes a new master key active and starts re-wrapping every data key
    /// with it. Without `to`, generates the key and adds it to this server's
    /// key file; with `to`, uses a key the operator already gave this server
    /// (and every other replica).
    pub async fn rotate_key(&self, p: &Principal, to: Option<&str>) -> AppResult<KeyStatus> {
        self.require_operator_admin(p)?;
        self.sync_keys().await?;
        let records = self.store.list_keys().await?;
        if let Some(d) = records.iter().find(|k| k.state == KeyState::Draining) {
            return Err(AppError::Conflict(format!(
                "The rotation away from key {} is still re-wrapping credentials; \
                 start another when `latchkey keys status` shows that key retired.",
                d.id
            )));
        }
        let current = self.keys.active();
        let new = match to {
            Some(id) => {
                if let Some(r) = records.iter().find(|k| k.id == id) {
                    let why = if r.state == KeyState::Retired {
                        "That key is retired and cannot be used again; generate a new one."
                    } else {
                        "That key is already active."
                    };
                    return Err(AppError::Validation(vec![FieldError::new(
                        "to", "invalid", why,
                    )]));
                }
                self.keys.get(id).ok_or_else(|| {
                    AppError::Validation(vec![FieldError::new(
                        "to",
                        "unknown_key",
                        format!(
                            "This server does not hold key {id}. Add it (`latchkey keys generate`) to the key file or \
                             LATCHKEY_MASTER_KEY of every replica, restart them, then rotate to it."
                        ),
                    )])
                })?
            }
            None => {
                let Some(file) = &self.keys.key_file else {
                    return Err(AppError::Conflict(
                        "This server's keys come from LATCHKEY_MASTER_KEY, which it cannot change. \
                         Generate a key with `latchkey keys generate`, add it to LATCHKEY_MASTER_KEY of every \
                         replica, restart them, then run `latchkey keys rotate --to KEY_ID`."
                            .into(),
                    ));
                };
                let key = Arc::new(MasterKey::generate()?);
                // The key is on disk before any data depends on it.
                let ring = self.keys.read().ring.with(key.clone());
                let file = file.clone();
                tokio::task::spawn_blocking(move || {
                    // Keep any key the operator added to the file meanwhile.
                    let on_disk = KeyRing::read_file(&file)
                        .map_err(|e| std::io::Error::other(e.to_string()))?
                        .unwrap_or_default();
                    let mut all = on_disk;
                    for k in ring.keys() {
                        all = all.with(k.clone());
                    }
                    all.write_file(&file)
                })
                .await
                .map_err(|e| AppError::Internal(e.into()))?
                .map_err(|e| {
                    AppError::Internal(anyhow::anyhow!("cannot write the key file: {e}"))
                })?;
                {
                    let mut held = self.keys.write();
                    held.ring = held.ring.with(key.clone());
                }
                key
            }
        };
        let audit = p.audit(
            "keys.rotate",
            "master_key",
            new.id(),
            serde_json::json!({ "from": current.id(), "to": new.id() }),
        );
        let record = KeyRecord {
            id: new.id().to_string(),
            state: KeyState::Active,
            key_check: new.seal_key_check()?,
            created_at: now(),
            retired_at: None,
        };
        match self.store.rotate_key(current.id(), record, audit).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                return Err(AppError::Conflict(
                    "The master keys changed meanwhile (another replica rotated?); see `latchkey keys status`."
                        .into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        self.keys.write().active = new.clone();
        tracing::info!(
            from = current.id(),
            to = new.id(),
            "master key rotation started"
        );
        self.read_key_status().await
    }

    /// Follows the key states in the data: switches to the active key the
    /// data names, and lets go of retired keys. Runs every second.
    pub async fn sync_keys(&self) -> AppResult<()> {
        let records = self.store.list_keys().await?;
        if let Some(active) = records.iter().find(|k| k.state == KeyState::Active) {
            if active.id != self.keys.active().id() {
                let key = match self.keys.get(&active.id) {
                    Some(k) => Some(k),
                    None => self.reload_key_file(&active.id),
                };
                match key {
                    Some(k) if k.opens_key_check(&active.key_check) => {
                        tracing::info!(key = %active.id, "the data's active master key changed; wrapping new data keys with it");
                        self.keys.write().active = k;
                    }
                    _ => {
                        let mut missing =
                            self.keys.missing.lock().unwrap_or_else(|e| e.into_inner());
                        if missing.as_deref() != Some(active.id.as_str()) {
                            tracing::error!(key = %active.id, "the data's active master key is not in this server's key ring: \
                                credentials re-wrapped by it cannot be opened here; add it to the key file or LATCHKEY_MASTER_KEY and restart");
                            *missing = Some(active.id.clone());
                        }
                    }
                }
            }
        }
        for k in records.iter().filter(|k| k.state == KeyState::Retired) {
            if self.keys.get(&k.id).is_some() {
                self.let_go(&k.id).await;
            }
        }
        Ok(())
    }

    /// The key `id` from the key file, if the operator added it there.
    fn reload_key_file(&self, id: &str) -> Option<Arc<MasterKey>> {
        let file = self.keys.key_file.as_ref()?;
        let ring = KeyRing::read_file(file).ok()??;
        let key = ring.get(id)?.clone();
        let mut held = self.keys.write();
        held.ring = held.ring.with(key.clone());
        Some(key)
    }

    /// Drops a retired key from memory (after a grace for reads in flight)
    /// and from the key file.
    async fn let_go(&self, id: &str) {
        let since = *self
            .keys
            .retiring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_insert_with(Instant::now);
        if since.elapsed() < RETIRED_GRACE {
            return;
        }
        let ring = {
            let mut held = self.keys.write();
            held.ring = held.ring.without(id);
            held.ring.clone()
        };
        if let Some(file) = self.keys.key_file.clone() {
            let id = id.to_string();
            let result = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
                match KeyRing::read_file(&file) {
                    Ok(Some(on_disk)) if on_disk.get(&id).is_some() => {
                        // Keep what the operator added meanwhile; drop only the retired key.
                        let mut keep = on_disk.without(&id);
                        for k in ring.keys() {
                            keep = keep.with(k.clone());
                        }
                        keep.write_file(&file).map(|_| true)
                    }
                    _ => Ok(false),
                }
            })
            .await;
            match result {
                Ok(Ok(true)) => tracing::info!("removed the retired master key from the key file"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot rewrite the key file without the retired key")
                }
                Err(e) => tracing::error!(error = %e, "key file task failed"),
            }
        }
        tracing::info!(key = %id, "retired master key dropped from memory");
        self.keys
            .retiring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// One tick of rotation: follow the data's key states, re-wrap rows of
    /// a draining key for a bounded time, and retire it once nothing uses
    /// it. Returns how many rows this tick re-wrapped.
    pub async fn maintain_keys(&self) -> AppResult<u64> {
        self.sync_keys().await?;
        let records = self.store.list_keys().await?;
        let Some(draining) = records.iter().find(|k| k.state == KeyState::Draining) else {
            return Ok(0);
        };
        let active = self.keys.active();
        let Some(old) = self.keys.get(&draining.id) else {
            return Ok(0);
        };
        if records
            .iter()
            .all(|k| k.id != active.id() || k.state != KeyState::Active)
        {
            // This server does not hold the data's active key: re-wrapping
            // is left to the replicas that do.
            return Ok(0);
        }
        let started = Instant::now();
        let mut moved = 0;
        while started.elapsed() < REWRAP_SLICE {
            let rows = self.store.wrapped_keys(old.id(), REWRAP_BATCH).await?;
            if rows.is_empty() {
                let audit = self.system_audit(old.id()).await?;
                if self.store.retire_key(old.id(), audit).await? {
                    tracing::info!(
                        key = old.id(),
                        "no credential uses the old master key any more: retired"
                    );
                    self.let_go(old.id()).await;
                }
                break;
            }
            let mut items = Vec::with_capacity(rows.len());
            for r in &rows {
                items.push(Rewrap {
                    id: r.id.clone(),
                    from_kek: r.kek_id.clone(),
                    to_kek: active.id().to_string(),
                    wrapped_dek: old.rewrap_data_key(
                        &r.wrapped_dek,
                        &r.tenant_id,
                        &r.id,
                        &active,
                    )?,
                });
            }
            moved += self.store.rewrap(items).await?;
            tokio::task::yield_now().await;
        }
        Ok(moved)
    }

    /// The audit entry of a retirement, which no caller asked for: in the
    /// operator tenant, by the system.
    async fn system_audit(&self, key: &str) -> AppResult<AuditEntry> {
        let tenants = self
            .store
            .list_tenants(storage::PageRequest {
                limit: 200,
                after: None,
            })
            .await?;
        let operator = tenants
            .items
            .iter()
            .find(|t| t.is_operator)
            .map(|t| t.id.clone())
            .unwrap_or_default();
        Ok(AuditEntry {
            id: domain::ids::audit(),
            tenant_id: operator,
            actor_id: "system".into(),
            actor_name: "key rotation".into(),
            action: "keys.retire".into(),
            target_type: "master_key".into(),
            target_id: key.into(),
            at: now(),
            source: None,
            details: serde_json::json!({}),
        })
    }
}
