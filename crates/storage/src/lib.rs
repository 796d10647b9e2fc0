//! The storage contract: one trait, [`Store`], that the application layer calls
//! and each backend implements (SQLite and PostgreSQL). It owns the
//! records as stored and the transactions; it knows nothing of HTTP, and it
//! never sees a secret in the clear (secrets arrive sealed by the crypto crate).
//!
//! Every mutation takes the audit entry that describes it and writes both in
//! one transaction: there is no change without its audit entry.

mod postgres;
pub mod snapshot;
mod sqlite;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// Another credential of the tenant has this name; carries its id.
    #[error("name already used by {0}")]
    NameTaken(String),
    /// The record's version is not the one the caller expected.
    #[error("version mismatch: current version is {current}")]
    VersionMismatch { current: i64 },
    #[error("already exists")]
    Conflict,
    /// The record is used by these credentials (ids and names).
    #[error("in use by {} credentials", .0.len())]
    InUse(Vec<(String, String)>),
    /// The data key was wrapped by a master key that has been retired
    /// meanwhile; wrap it with the active key and try again.
    #[error("master key {0} is retired")]
    KeyRetired(String),
    #[error("storage failure: {0}")]
    Backend(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// One page of a list and the cursor of the next, if any.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Cuts a `limit + 1` result to a page; the cursor is the last item's id.
pub(crate) fn page<T>(mut items: Vec<T>, limit: usize, id: impl Fn(&T) -> &str) -> Page<T> {
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|i| id(i).to_string())
    } else {
        None
    };
    Page { items, next_cursor }
}

/// How many of the newest rows a search looks at first, before it weighs
/// scanning on against asking the index (see [`next_window`]).
pub(crate) const SEARCH_WINDOW: i64 = 2000;

/// How many of the newest rows a search may scan in all before it asks the
/// index (see [`next_window`]).
pub(crate) const SEARCH_STRETCH: i64 = 20_000;

/// After a scan of the newest `seen` rows found `hits` matches, not yet a
/// page of `limit` and one more, with rows left: how many more rows to scan,
/// or `None` to ask the index. Scanning on pays only while the matches so
/// far promise the rest of the page within [`SEARCH_STRETCH`] rows: a word
/// in 1% of a million names needs about 5,000 of the newest, where the
/// index would read every one of its 10,000 rows to sort them by id. A rare
/// word (no match yet, or too few) goes to the index at once.
///
/// On SQLite the scan reads names and integrations from a covering index
/// (migration 0007), not the table: an earlier scan of the table's rows in
/// id order read a scattered page per row and filled the readers' page
/// caches (RSS 83.5 MB after the searches at 1,000,000 credentials, over the
/// 80 MB budget). A search filtered by `auth_type`, which no index covers,
/// does not scan on there.
pub(crate) fn next_window(hits: usize, seen: i64, limit: usize) -> Option<i64> {
    debug_assert!(hits <= limit, "a full page needs no more rows");
    if hits == 0 {
        return None;
    }
    let wanted = (limit + 1 - hits) as i64;
    // The rows expected to hold them at the density so far, and a quarter more.
    let more = (wanted * seen / hits as i64 * 5 / 4).max(500);
    (seen + more <= SEARCH_STRETCH).then_some(more)
}

#[derive(Debug, Clone, Copy)]
pub struct PageRequest<'a> {
    pub limit: usize,
    /// The id after which the page starts (lists are in descending id order).
    pub after: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub id: String,
    pub name: String,
    pub is_operator: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub role: String,
    /// SHA-256 of the token; the token itself is never stored.
    pub hash: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Metadata of one stored secret field: that it is set, and its last four
/// characters where the secret is long enough for that to be safe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMeta {
    pub field: String,
    pub last4: Option<String>,
}

/// A secret field sealed by the credential's data key.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    pub field: String,
    pub sealed: Vec<u8>,
}

/// A credential as stored, without its sealed secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    pub integration_id: String,
    pub auth_type: String,
    pub services: BTreeMap<String, String>,
    pub scopes: Vec<String>,
    pub params: BTreeMap<String, String>,
    pub secret_fields: Vec<SecretMeta>,
    pub status: String,
    pub status_message: Option<String>,
    pub checked_at: Option<DateTime<Utc>>,
    pub version: i64,
    pub kek_id: String,
    pub wrapped_dek: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// Filters of the credential list. `q_integrations` are the integration ids
/// whose display name matched `q` (the catalog resolves those, not storage).
#[derive(Debug, Clone, Default)]
pub struct CredentialFilter {
    pub q: Option<String>,
    pub q_integrations: Vec<String>,
    pub integration: Option<String>,
    pub auth_type: Option<String>,
    pub status: Option<String>,
}

/// A change to a credential: the new state (version already incremented),
/// the secrets to write, and the secret fields to remove.
#[derive(Debug, Clone)]
pub struct CredentialUpdate {
    pub record: CredentialRecord,
    pub expected_version: i64,
    pub put_secrets: Vec<SealedSecret>,
    pub remove_secrets: Vec<String>,
}

/// One credential of an import: a new one with its sealed secrets, or a
/// whole replacement of an existing one (same id and data key).
#[derive(Debug, Clone)]
pub enum ImportItem {
    Insert(CredentialRecord, Vec<SealedSecret>),
    Update(CredentialUpdate),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: String,
    pub tenant_id: String,
    pub actor_id: String,
    pub actor_name: String,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub at: DateTime<Utc>,
    pub source: Option<String>,
    /// What changed, by name (never values of secrets).
    pub details: serde_json::Value,
}

/// A tenant's own service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub role: String,
    pub description: String,
    pub integrations: Vec<String>,
    pub spec: serde_json::Value,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// One received webhook or action callback, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: String,
    pub tenant_id: String,
    pub credential_id: String,
    /// `webhook` or `action`.
    pub kind: String,
    pub valid_request: bool,
    pub app_user_id: Option<String>,
    pub user_id: Option<String>,
    pub event_type: String,
    pub delivery_id: Option<String>,
    pub payload: serde_json::Value,
    pub received_at: DateTime<Utc>,
}

/// An event to store, with what the store checks in the same transaction.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: EventRecord,
    /// The credential version the event was verified against: it is stored
    /// only while the credential still exists at that version.
    pub credential_version: Option<i64>,
    /// When the event has no `user_id`, look its `app_user_id` up in the
    /// credential's user mappings, in the same transaction.
    pub map_user: bool,
}

/// What [`Store::store_event`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventStored {
    /// Stored, with the user id it was stored with.
    Stored { user_id: Option<String> },
    /// A delivery id already stored for the credential and kind: not stored again.
    Duplicate,
    /// The credential is gone or no longer at the version given: not stored.
    CredentialChanged,
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub credential_id: Option<String>,
    pub kind: Option<String>,
    pub event_type: Option<String>,
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMapping {
    pub app_user_id: String,
    pub user_id: String,
    pub created_at: DateTime<Utc>,
}

/// An ingress counter increment: credential, kind, outcome, amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterDelta {
    pub credential_id: String,
    pub kind: String,
    /// `accepted`, `duplicate`, `unmapped_user` or `rejected:<reason>`.
    pub outcome: String,
    pub count: u64,
}

/// A dashboard session: the hash of its id, the token it acts as, and the
/// token that state-changing requests must echo (CSRF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id_hash: [u8; 32],
    pub token_id: String,
    pub csrf: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The state of a master key in the data (see `master_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Wraps new data keys. Exactly one key is active.
    Active,
    /// Still wraps some data keys; a rotation is moving them to the active key.
    Draining,
    /// Wraps nothing and never will again.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Draining => "draining",
            KeyState::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Result<KeyState> {
        match s {
            "active" => Ok(KeyState::Active),
            "draining" => Ok(KeyState::Draining),
            "retired" => Ok(KeyState::Retired),
            other => Err(StoreError::Backend(format!("unknown key state {other:?}"))),
        }
    }
}

/// A master key as the data knows it: its fingerprint, never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub state: KeyState,
    /// A value sealed by the key, which only the right key opens.
    pub key_check: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

/// A credential's wrapped data key, as rotation reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub tenant_id: String,
    pub id: String,
    pub kek_id: String,
    pub wrapped_dek: Vec<u8>,
}

/// The same data key wrapped by another master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrap {
    pub id: String,
    /// Changed only while the row is still wrapped by this key.
    pub from_kek: String,
    pub to_kek: String,
    pub wrapped_dek: Vec<u8>,
}

/// What [`Store::find_token_with_credential`] found.
#[derive(Debug, Clone)]
pub struct TokenWithCredential {
    pub token: TokenRecord,
    pub tenant: TenantRecord,
    /// `None` when the tenant has no such credential.
    pub credential: Option<(CredentialRecord, Vec<CounterDelta>)>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads a value of the installation's metadata (e.g. the key check).
    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Writes a metadata value unless one exists; true if written.
    async fn meta_put_if_absent(&self, key: &str, value: Vec<u8>) -> Result<bool>;
    /// Whether any credential is stored (a key check is only created on empty data).
    async fn has_credentials(&self) -> Result<bool>;

    async fn create_tenant(
        &self,
        tenant: TenantRecord,
        admin: TokenRecord,
        audit: Option<AuditEntry>,
    ) -> Result<()>;
    async fn list_tenants(&self, page: PageRequest<'_>) -> Result<Page<TenantRecord>>;
    async fn tenant_count(&self) -> Result<u64>;

    async fn create_token(&self, token: TokenRecord, audit: AuditEntry) -> Result<()>;
    async fn list_tokens(&self, tenant: &str, page: PageRequest<'_>) -> Result<Page<TokenRecord>>;
    async fn revoke_token(
        &self,
        tenant: &str,
        id: &str,
        at: DateTime<Utc>,
        audit: AuditEntry,
    ) -> Result<()>;
    /// The live (not revoked) token with this hash, and its tenant.
    async fn find_token(&self, hash: [u8; 32]) -> Result<Option<(TokenRecord, TenantRecord)>>;

    async fn insert_credential(
        &self,
        record: CredentialRecord,
        secrets: Vec<SealedSecret>,
        audit: AuditEntry,
    ) -> Result<()>;
    async fn get_credential(&self, tenant: &str, id: &str) -> Result<Option<CredentialRecord>>;
    /// The id of the tenant's credential with this name (case-insensitive), if any.
    async fn credential_id_by_name(&self, tenant: &str, name: &str) -> Result<Option<String>>;
    /// The credential with its sealed secrets, for the code that must open them.
    async fn get_sealed(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(CredentialRecord, Vec<SealedSecret>)>>;
    async fn list_credentials(
        &self,
        tenant: &str,
        filter: &CredentialFilter,
        page: PageRequest<'_>,
    ) -> Result<Page<CredentialRecord>>;
    async fn update_credential(&self, update: CredentialUpdate, audit: AuditEntry) -> Result<()>;
    /// Writes an import in one transaction: new credentials and
    /// replacements of existing ones; on any error nothing is written.
    async fn import_credentials(&self, items: Vec<ImportItem>, audit: AuditEntry) -> Result<()>;
    /// Removes the credential and its secrets for good.
    async fn delete_credential(&self, tenant: &str, id: &str, audit: AuditEntry) -> Result<()>;

    async fn list_audit(&self, tenant: &str, page: PageRequest<'_>) -> Result<Page<AuditEntry>>;
    /// Records an action that changes no record (an export, say).
    async fn record_audit(&self, audit: AuditEntry) -> Result<()>;

    /// Records the result of a token validation (not a change of the
    /// credential's definition, so the version stays).
    async fn set_credential_status(
        &self,
        tenant: &str,
        id: &str,
        status: &str,
        message: &str,
        checked_at: DateTime<Utc>,
        audit: AuditEntry,
    ) -> Result<()>;
    /// A credential and its sealed secrets by id alone, for ingress (the URL
    /// names no tenant).
    async fn get_sealed_by_id(
        &self,
        id: &str,
    ) -> Result<Option<(CredentialRecord, Vec<SealedSecret>)>>;

    async fn create_service(&self, service: ServiceRecord, audit: AuditEntry) -> Result<()>;
    async fn get_service(&self, tenant: &str, id: &str) -> Result<Option<ServiceRecord>>;
    async fn list_services(&self, tenant: &str) -> Result<Vec<ServiceRecord>>;
    /// Replaces a service; refused with [`StoreError::InUse`] while credentials
    /// use it, unless `force`.
    async fn update_service(
        &self,
        service: ServiceRecord,
        expected_version: i64,
        force: bool,
        audit: AuditEntry,
    ) -> Result<()>;
    /// Deletes a service; refused with [`StoreError::InUse`] while credentials use it.
    async fn delete_service(&self, tenant: &str, id: &str, audit: AuditEntry) -> Result<()>;

    /// Stores an event unless one with the same delivery id exists for the
    /// credential and kind, and (when `credential_version` is given) only
    /// while the credential is still at that version; durable when it
    /// returns. Concurrent calls share commits (group commit).
    async fn store_event(&self, event: NewEvent) -> Result<EventStored>;
    /// [`Store::store_event`] with no version check and no mapping: true when stored.
    async fn insert_event(&self, event: EventRecord) -> Result<bool> {
        Ok(matches!(
            self.store_event(NewEvent {
                event,
                credential_version: None,
                map_user: false,
            })
            .await?,
            EventStored::Stored { .. }
        ))
    }
    async fn get_event(&self, tenant: &str, id: &str) -> Result<Option<EventRecord>>;
    async fn list_events(
        &self,
        tenant: &str,
        filter: &EventFilter,
        page: PageRequest<'_>,
    ) -> Result<Page<EventRecord>>;

    async fn put_user_mapping(
        &self,
        tenant: &str,
        credential: &str,
        mapping: UserMapping,
        audit: AuditEntry,
    ) -> Result<()>;
    async fn delete_user_mapping(
        &self,
        tenant: &str,
        credential: &str,
        app_user_id: &str,
        audit: AuditEntry,
    ) -> Result<()>;
    async fn list_user_mappings(
        &self,
        tenant: &str,
        credential: &str,
        page: PageRequest<'_>,
    ) -> Result<Page<UserMapping>>;
    async fn find_user_mapping(
        &self,
        credential: &str,
        app_user_id: &str,
    ) -> Result<Option<String>>;

    /// Opens a dashboard session for a token.
    async fn create_session(&self, session: SessionRecord) -> Result<()>;
    /// The live session with this id hash, with its token and tenant; none
    /// once it expired or its token was revoked.
    async fn find_session(
        &self,
        id_hash: [u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<(SessionRecord, TokenRecord, TenantRecord)>>;
    async fn delete_session(&self, id_hash: [u8; 32]) -> Result<()>;

    async fn add_counters(&self, deltas: Vec<CounterDelta>) -> Result<()>;
    async fn counters(&self, credential: &str) -> Result<Vec<CounterDelta>>;
    /// A credential and its stored ingress counters, read together: one
    /// reader connection (SQLite), one round trip (PostgreSQL).
    async fn get_credential_with_counters(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(CredentialRecord, Vec<CounterDelta>)>>;
    /// A bearer's read of one credential: the live token with this hash and
    /// its tenant, and (when there is one) that tenant's credential `id`
    /// with its stored counters: one statement on either backend (on
    /// PostgreSQL, one round trip), where the two reads above cost two. The default does those two, one after the other.
    async fn find_token_with_credential(
        &self,
        hash: [u8; 32],
        id: &str,
    ) -> Result<Option<TokenWithCredential>> {
        let Some((token, tenant)) = self.find_token(hash).await? else {
            return Ok(None);
        };
        let credential = self.get_credential_with_counters(&tenant.id, id).await?;
        Ok(Some(TokenWithCredential {
            token,
            tenant,
            credential,
        }))
    }

    /// Every master key the data knows, oldest first.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>>;
    /// Records the first master key as active, unless any key is recorded
    /// (another replica may have won the race); true if this one was.
    async fn add_first_key(&self, key: KeyRecord) -> Result<bool>;
    /// Starts a rotation in one transaction: `from`, which must be the
    /// active key with no other key draining, becomes draining and `to`
    /// becomes active (added, or moved from draining back to active).
    /// `Conflict` if the keys are not in that state.
    async fn rotate_key(&self, from: &str, to: KeyRecord, audit: AuditEntry) -> Result<()>;
    /// How many credentials each master key wraps.
    async fn key_usage(&self) -> Result<Vec<(String, u64)>>;
    /// Up to `limit` credentials whose data key `kek_id` wraps.
    async fn wrapped_keys(&self, kek_id: &str, limit: usize) -> Result<Vec<WrappedKey>>;
    /// Stores re-wrapped data keys in one transaction, each only where the
    /// row is still wrapped by its `from_kek`; returns how many changed.
    /// Versions and audit stay as they are: the credential did not change.
    async fn rewrap(&self, items: Vec<Rewrap>) -> Result<u64>;
    /// Retires a draining key if no credential uses it, in one transaction
    /// that new writes wrapped by that key wait for; true if retired.
    async fn retire_key(&self, id: &str, audit: AuditEntry) -> Result<bool>;

    /// Sends every row of every table ([`snapshot::TABLES`]) to `sink`, read
    /// in one consistent snapshot, then [`snapshot::Chunk::End`]. Stops
    /// quietly (Ok) if the receiver goes away.
    async fn export_snapshot(&self, sink: tokio::sync::mpsc::Sender<snapshot::Chunk>)
        -> Result<()>;

    /// Writes the rows from `source` in one transaction, committed only when
    /// [`snapshot::Chunk::End`] arrives; refuses a store that holds any row.
    async fn import_snapshot(
        &self,
        source: tokio::sync::mpsc::Receiver<snapshot::Chunk>,
    ) -> Result<snapshot::CopyReport>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_scans_on_only_where_its_matches_promise_a_page() {
        // Nothing matched, or too few for the stretch: ask the index.
        assert_eq!(next_window(0, 2_000, 50), None);
        assert_eq!(next_window(1, 2_000, 50), None);
        assert_eq!(next_window(30, 19_000, 50), None);
        // 1%: 31 more at 1 in 100, and a quarter more.
        assert_eq!(next_window(20, 2_000, 50), Some(3_875));
        // One short: never less than 500 rows at a time.
        assert_eq!(next_window(50, 2_000, 50), Some(500));
        // Up to the stretch, and not past it.
        assert_eq!(next_window(7, 2_000, 50), Some(15_713));
        assert_eq!(next_window(6, 2_000, 50), None);
    }
}
