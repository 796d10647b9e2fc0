//! Latchkey's domain: the words of the product (tenant, token, integration,
//! service, credential, audit entry) as types, the catalog, and the rules a
//! credential draft must satisfy. Nothing here does I/O or knows about HTTP,
//! SQL or keys.

pub mod catalog;
pub mod credential;
pub mod ids;
pub mod spec;

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use catalog::{Catalog, Integration, ServiceDef};

/// How a credential authenticates to the app. API Key is the first type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthType {
    ApiKey,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::ApiKey => "api_key",
        }
    }

    pub fn parse(s: &str) -> Option<AuthType> {
        match s {
            "api_key" => Some(AuthType::ApiKey),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            AuthType::ApiKey => "API Key",
        }
    }

    /// Whether the type needs a browser consent step (and so an Authentication URL).
    pub fn has_consent_step(self) -> bool {
        match self {
            AuthType::ApiKey => false,
        }
    }
}

/// The five roles a credential's config services play.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ServiceRole {
    TokenValidation,
    UserIdMapper,
    ActionCallbackParser,
    WebhookParser,
    WebhookEventVerification,
}

impl ServiceRole {
    pub const ALL: [ServiceRole; 5] = [
        ServiceRole::TokenValidation,
        ServiceRole::UserIdMapper,
        ServiceRole::ActionCallbackParser,
        ServiceRole::WebhookParser,
        ServiceRole::WebhookEventVerification,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceRole::TokenValidation => "token_validation",
            ServiceRole::UserIdMapper => "user_id_mapper",
            ServiceRole::ActionCallbackParser => "action_callback_parser",
            ServiceRole::WebhookParser => "webhook_parser",
            ServiceRole::WebhookEventVerification => "webhook_event_verification",
        }
    }

    pub fn parse(s: &str) -> Option<ServiceRole> {
        ServiceRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for ServiceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of the last token validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialStatus {
    Valid,
    Invalid,
    Unverified,
}

impl CredentialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialStatus::Valid => "valid",
            CredentialStatus::Invalid => "invalid",
            CredentialStatus::Unverified => "unverified",
        }
    }

    pub fn parse(s: &str) -> Option<CredentialStatus> {
        match s {
            "valid" => Some(CredentialStatus::Valid),
            "invalid" => Some(CredentialStatus::Invalid),
            "unverified" => Some(CredentialStatus::Unverified),
            _ => None,
        }
    }
}

/// A management token's role within its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Developer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "developer" => Some(Role::Developer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn can_write_credentials(self) -> bool {
        self >= Role::Developer
    }
}

/// A problem with one field of a request: which field, a stable code, and a
/// sentence that says what to fix. Never carries the field's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub code: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            code: code.into(),
            message: message.into(),
        }
    }
}
