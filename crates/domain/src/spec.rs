//! What a service does, as data: the spec forms that built-in services (in
//! `catalog/`) and tenants' custom services share. The `services` crate
//! carries them out; here they are only shapes and their rules.
//!
//! Value expressions (`Expr`) used by the declarative parsers name where a
//! value comes from: `$.a.b` (an RFC 9535 JSONPath into the JSON body),
//! `header:Name`, `form:Field` (a form-encoded body field), `query:Name`, or
//! `literal:text`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{FieldError, ServiceRole};

/// A rule on the provider's JSON answer: the value at `path` must equal `equals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonRule {
    pub path: String,
    /// Any JSON value: `true`, `"ok"`, `1`, an object….
    #[schema(value_type = Value)]
    pub equals: serde_json::Value,
}

/// A Token Validation Service: one HTTP request on the integration's base
/// URL with the credential applied the integration's way, and success rules.
/// Fields left out take the integration's declared validation endpoint.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path (and query) on the base URL; `${field}` placeholders allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_status: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_json: Option<JsonRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HmacAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Hex,
    Base64,
}

fn default_tolerance() -> u64 {
    300
}
fn default_content() -> String {
    "{body}".into()
}

/// The generic HMAC signature scheme for senders not built in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacScheme {
    pub algorithm: HmacAlgorithm,
    /// The header that carries the signature.
    pub header: String,
    pub encoding: Encoding,
    /// Text before the signature in the header, e.g. `sha256=`.
    #[serde(default)]
    pub prefix: String,
    /// What is signed: `{body}`, `{timestamp}`, `{id}`, `{method}` and `{url}` are replaced.
    #[serde(default = "default_content")]
    pub content: String,
    /// The header with the Unix timestamp, when the sender sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_header: Option<String>,
    /// Replay window in seconds, when there is a timestamp.
    #[serde(default = "default_tolerance")]
    pub tolerance_secs: u64,
    /// The timestamp counts milliseconds, not seconds (an RFC 3339 time is read as such).
    #[serde(default)]
    pub timestamp_in_millis: bool,
}

/// An echo answer to a provider's handshake, e.g. Slack's `url_verification`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Handshake {
    /// Where the value to echo is, e.g. `$.challenge` or `query:validationToken`.
    pub echo: String,
    /// Only when this expression has this value (e.g. `$.type` = `url_verification`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
}

/// A declarative webhook parser: where each normal-form value is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonEvents {
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake: Option<Handshake>,
}

/// A declarative action callback parser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonAction {
    pub action_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
}

/// What a service does. `kind` names the form; each form serves one role,
/// except `script`, which serves any role but token validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServiceSpec {
    HttpCheck(HttpCheck),

    TwilioSignature,
    StripeSignature {
        #[serde(default = "default_tolerance")]
        tolerance_secs: u64,
    },
    GithubSignature,
    SlackSignature {
        #[serde(default = "default_tolerance")]
        tolerance_secs: u64,
    },
    ShopifySignature,
    StandardWebhooksSignature {
        #[serde(default = "default_tolerance")]
        tolerance_secs: u64,
    },
    HmacSignature(HmacScheme),
    /// SendGrid's Event Webhook: ECDSA P-256 over timestamp and body, checked
    /// with the verification key (base64 DER public key) in `webhook_secret`.
    SendgridSignature {
        #[serde(default = "default_tolerance")]
        tolerance_secs: u64,
    },

    StripeEvents,
    GithubEvents,
    SlackEvents,
    TwilioEvents,
    StandardWebhooksEvents {
        /// Where the app user id is; Standard Webhooks does not fix one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        app_user_id: Option<String>,
    },
    JsonEvents(JsonEvents),

    Identity,
    MappingTable,
    PayloadUser {
        /// Where the platform user id is in the payload.
        path: String,
    },

    SlackInteractivity,
    JsonAction(JsonAction),

    /// A sandboxed script (rhai).
    Script {
        source: String,
    },
}

impl ServiceSpec {
    /// The role this form serves; `None` for scripts, which serve any role
    /// but token validation.
    pub fn role(&self) -> Option<ServiceRole> {
        use ServiceSpec::*;
        Some(match self {
            HttpCheck(_) => ServiceRole::TokenValidation,
            TwilioSignature
            | StripeSignature { .. }
            | GithubSignature
            | SlackSignature { .. }
            | ShopifySignature
            | StandardWebhooksSignature { .. }
            | HmacSignature(_)
            | SendgridSignature { .. } => ServiceRole::WebhookEventVerification,
            StripeEvents
            | GithubEvents
            | SlackEvents
            | TwilioEvents
            | StandardWebhooksEvents { .. }
            | JsonEvents(_) => ServiceRole::WebhookParser,
            Identity | MappingTable | PayloadUser { .. } => ServiceRole::UserIdMapper,
            SlackInteractivity | JsonAction(_) => ServiceRole::ActionCallbackParser,
            Script { .. } => return None,
        })
    }

    /// Checks the spec fits `role` and its expressions are well formed.
    pub fn check(&self, role: ServiceRole) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        match self.role() {
            Some(r) if r != role => errors.push(FieldError::new(
                "spec.kind",
                "wrong_role",
                format!("This kind of spec is a {r} service, not {role}."),
            )),
            None if role == ServiceRole::TokenValidation => errors.push(FieldError::new(
                "spec.kind",
                "not_allowed",
                "Token validation is an http_check: scripts have no network access.",
            )),
            _ => {}
        }
        let mut expr = |field: &str, e: &str| {
            if let Err(m) = check_expr(e) {
                errors.push(FieldError::new(format!("spec.{field}"), "invalid", m));
            }
        };
        match self {
            ServiceSpec::JsonEvents(j) => {
                expr("event_type", &j.event_type);
                for (f, v) in [
                    ("app_user_id", &j.app_user_id),
                    ("delivery_id", &j.delivery_id),
                ] {
                    if let Some(v) = v {
                        expr(f, v);
                    }
                }
                if let Some(h) = &j.handshake {
                    expr("handshake.echo", &h.echo);
                    if let Some(w) = &h.when {
                        expr("handshake.when", w);
                    }
                }
            }
            ServiceSpec::JsonAction(a) => {
                expr("action_type", &a.action_type);
                for (f, v) in [
                    ("action_id", &a.action_id),
                    ("value", &a.value),
                    ("app_user_id", &a.app_user_id),
                    ("response_url", &a.response_url),
                    ("delivery_id", &a.delivery_id),
                ] {
                    if let Some(v) = v {
                        expr(f, v);
                    }
                }
            }
            ServiceSpec::StandardWebhooksEvents {
                app_user_id: Some(p),
            } => expr("app_user_id", p),
            ServiceSpec::PayloadUser { path } => expr("path", path),
            ServiceSpec::HttpCheck(h) => {
                if let Some(p) = &h.path {
                    if !p.starts_with('/') {
                        errors.push(FieldError::new(
                            "spec.path",
                            "invalid",
                            "The path starts with /.",
                        ));
                    }
                }
                if let Some(m) = &h.method {
                    if !["GET", "POST", "HEAD"].contains(&m.as_str()) {
                        errors.push(FieldError::new(
                            "spec.method",
                            "invalid",
                            "method is GET, POST or HEAD.",
                        ));
                    }
                }
            }
            ServiceSpec::HmacSignature(h) => {
                if h.header.trim().is_empty() {
                    errors.push(FieldError::new(
                        "spec.header",
                        "required",
                        "Name the signature header.",
                    ));
                }
                if h.content.contains("{timestamp}") && h.timestamp_header.is_none() {
                    errors.push(FieldError::new(
                        "spec.timestamp_header",
                        "required",
                        "content uses {timestamp}: name the header that carries it.",
                    ));
                }
            }
            ServiceSpec::Script { source } if source.len() > 64 * 1024 => {
                errors.push(FieldError::new(
                    "spec.source",
                    "too_long",
                    "A script is at most 64 KiB.",
                ));
            }
            _ => {}
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Checks the syntax of a value expression (see the module comment).
pub fn check_expr(e: &str) -> Result<(), String> {
    if e.starts_with('$') {
        return Ok(()); // JSONPath syntax is checked where it is compiled.
    }
    match e.split_once(':') {
        Some(("header" | "form" | "query", name)) if !name.is_empty() => Ok(()),
        Some(("literal", _)) => Ok(()),
        _ => Err(format!(
            "{e:?} is not a value expression: use $.path, header:Name, form:Field, query:Name or literal:text."
        )),
    }
}
