//! The application layer: every use case of Latchkey (create a credential,
//! revoke a token, …) as a method of [`App`], with its authorization rule. It
//! calls storage, crypto and the domain; it never sees HTTP types, and HTTP
//! never calls storage or crypto around it.
//!
//! Error policy: use cases return [`AppError`], typed in product words; the
//! HTTP edge maps each variant to one status and problem `code`, once.

mod config_services;
mod credentials;
mod identity;
mod import;
mod ingress;
pub mod keys;
pub mod limits;
mod validation;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::{Catalog, FieldError, Role};
use storage::{AuditEntry, Store, StoreError};

pub use config_services::*;
pub use credentials::*;
pub use identity::*;
pub use import::*;
pub use ingress::*;
pub use keys::{KeyInfo, KeyStatus, Keys, RotationProgress};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("a credential named {name:?} already exists")]
    NameTaken { name: String, existing_id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("the record has changed since version {expected}; it is now at version {current}")]
    VersionMismatch { expected: i64, current: i64 },
    /// Credentials (id, name) use the record.
    #[error("in use by credentials")]
    InUse(Vec<(String, String)>),
    /// The provider refused the key; the message is its reason.
    #[error("{0}")]
    TokenRejected(String),
    #[error("{0}")]
    ProviderUnreachable(String),
    /// An import file that cannot be read: a stable code and what to do.
    #[error("{message}")]
    ImportFile { code: &'static str, message: String },
    /// Names of an import that the tenant already uses: (name, existing id).
    #[error("names already used")]
    ImportConflict(Vec<(String, String)>),
    /// Too many attempts; try again after this long.
    #[error("{message}")]
    TooManyRequests {
        retry_after: std::time::Duration,
        message: &'static str,
    },
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> AppError {
        match e {
            StoreError::NotFound => AppError::NotFound("record"),
            StoreError::InUse(users) => AppError::InUse(users),
            other => AppError::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<crypto::CryptoError> for AppError {
    fn from(e: crypto::CryptoError) -> AppError {
        AppError::Internal(anyhow::Error::new(e))
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// Who is calling: a live management token, its role and tenant, and the
/// address the call came from (for the audit log).
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: String,
    pub token_name: String,
    pub tenant_id: String,
    pub tenant_name: String,
    pub tenant_is_operator: bool,
    pub role: Role,
    pub source: Option<String>,
}

impl Principal {
    pub fn require(&self, role: Role, what: &'static str) -> AppResult<()> {
        if self.role >= role {
            Ok(())
        } else {
            Err(AppError::Forbidden(what))
        }
    }

    fn audit(
        &self,
        action: &str,
        target_type: &str,
        target_id: &str,
        details: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            id: domain::ids::audit(),
            tenant_id: self.tenant_id.clone(),
            actor_id: self.token_id.clone(),
            actor_name: self.token_name.clone(),
            action: action.into(),
            target_type: target_type.into(),
            target_id: target_id.into(),
            at: now(),
            source: self.source.clone(),
            details,
        }
    }
}

/// A page request as the API takes it: a limit and an opaque cursor.
#[derive(Debug, Clone, Default)]
pub struct PageParams {
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 200;

impl PageParams {
    /// The limit and the decoded cursor, or the field errors that say what to fix.
    fn resolve(&self) -> Result<(usize, Option<String>), Vec<FieldError>> {
        let mut errors = Vec::new();
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            errors.push(FieldError::new(
                "limit",
                "out_of_range",
                format!("limit must be 1 to {MAX_LIMIT}."),
            ));
        }
        let after = match &self.cursor {
            None => None,
            Some(c) => match decode_cursor(c) {
                Some(id) => Some(id),
                None => {
                    errors.push(FieldError::new(
                        "cursor",
                        "invalid",
                        "Use the next_cursor value of the previous page as it was given.",
                    ));
                    None
                }
            },
        };
        if errors.is_empty() {
            Ok((limit, after))
        } else {
            Err(errors)
        }
    }
}

pub fn encode_cursor(id: &str) -> String {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    URL_SAFE_NO_PAD.encode(id)
}

fn decode_cursor(c: &str) -> Option<String> {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let raw = URL_SAFE_NO_PAD.decode(c).ok()?;
    let id = String::from_utf8(raw).ok()?;
    (id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some(id)
}

pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Everything a use case needs, shared by every request.
pub struct App {
    pub store: Arc<dyn Store>,
    /// The master keys this server holds, and the active one.
    pub keys: Keys,
    pub catalog: Catalog,
    /// Base of the callback URLs, without a trailing slash.
    pub public_url: String,
    pub validator: services::validate::Validator,
    pub counters: Counters,
    pub script_limits: services::script::Limits,
    /// Failed sign-ins and bad tokens per source address.
    pub auth_failures: limits::FailureLimiter,
    /// Deliveries per credential.
    pub ingress_limit: limits::IngressLimiter,
    /// Credentials recently read by ingress (see [`ingress`]).
    pub ingress_credentials: IngressCredentials,
}

/// Failed authentications an address may make per minute.
pub const DEFAULT_AUTH_FAILURES: u32 = 20;
/// Deliveries per second one credential may receive (bursts of twice that).
pub const DEFAULT_INGRESS_PER_SECOND: u32 = 1000;

impl App {
    pub fn new(
        store: Arc<dyn Store>,
        keys: Keys,
        catalog: Catalog,
        public_url: String,
        validator: services::validate::Validator,
    ) -> App {
        App {
            store,
            keys,
            catalog,
            public_url,
            validator,
            counters: Counters::default(),
            script_limits: services::script::Limits::default(),
            auth_failures: limits::FailureLimiter::new(
                DEFAULT_AUTH_FAILURES,
                std::time::Duration::from_secs(60),
            ),
            ingress_limit: limits::IngressLimiter::new(DEFAULT_INGRESS_PER_SECOND),
            ingress_credentials: IngressCredentials::default(),
        }
    }
}
