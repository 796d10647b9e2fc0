//! A credential draft and the rules it must satisfy before anything is stored.
//! Validation collects every problem at once, per field, and never echoes a
//! secret value in a message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use regex::Regex;
use secrecy::{ExposeSecret, SecretString};

use crate::{AuthType, Catalog, FieldError, Integration, ServiceDef, ServiceRole};

pub const MAX_NAME: usize = 100;
pub const MAX_DESCRIPTION: usize = 2000;
pub const MAX_VALUE: usize = 8192;
pub const MAX_SCOPES: usize = 100;
pub const MAX_PARAMS: usize = 50;

/// The name of the secret field that holds the key itself.
pub const API_KEY_FIELD: &str = "api_key";
/// The config param that lets a credential point the integration elsewhere.
pub const BASE_URL_PARAM: &str = "base_url";

/// One config param as a client sent it. A secret param's value may be absent
/// on update, which means "keep the stored one".
#[derive(Debug)]
pub struct ParamInput {
    pub key: String,
    pub value: Option<SecretString>,
    pub secret: bool,
}

/// A whole credential as the client wants it to be (for an update: the stored
/// credential with the patch applied).
#[derive(Debug)]
pub struct Draft {
    pub name: String,
    pub description: String,
    pub integration: String,
    pub auth_type: String,
    /// Chosen service per role; roles not named take the integration's default.
    pub services: BTreeMap<String, String>,
    /// `None` keeps the stored key (only valid when one is stored).
    pub api_key: Option<SecretString>,
    pub scopes: Vec<String>,
    pub params: Vec<ParamInput>,
}

/// A draft that passed every rule, with defaults filled in and each param
/// sorted into plain or secret as the integration says.
#[derive(Debug)]
pub struct CheckedDraft {
    pub name: String,
    pub description: String,
    pub integration: String,
    pub auth_type: AuthType,
    pub services: BTreeMap<ServiceRole, String>,
    pub scopes: Vec<String>,
    pub plain_params: BTreeMap<String, String>,
    /// New secret values to seal, by field name (`api_key` included when given).
    pub new_secrets: BTreeMap<String, SecretString>,
    /// Secret fields whose stored value is kept as it is.
    pub kept_secrets: BTreeSet<String>,
}

static PARAM_KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$").expect("static regex"));

fn is_control_free(s: &str) -> bool {
    !s.chars().any(|c| c.is_control())
}

/// Checks a draft against the catalog and the tenant's own services.
/// `stored_secrets` names the secret fields the credential already has
/// (empty on create).
pub fn check(
    catalog: &Catalog,
    custom_services: &[ServiceDef],
    draft: Draft,
    stored_secrets: &BTreeSet<String>,
) -> Result<CheckedDraft, Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = draft.name.trim().to_string();
    if name.is_empty() {
        errors.push(FieldError::new(
            "name",
            "required",
            "Give the credential a name.",
        ));
    } else if name.chars().count() > MAX_NAME {
        errors.push(FieldError::new(
            "name",
            "too_long",
            format!("Use at most {MAX_NAME} characters."),
        ));
    } else if !is_control_free(&name) {
        errors.push(FieldError::new(
            "name",
            "invalid",
            "Remove control characters from the name.",
        ));
    }
    if draft.description.chars().count() > MAX_DESCRIPTION {
        errors.push(FieldError::new(
            "description",
            "too_long",
            format!("Use at most {MAX_DESCRIPTION} characters."),
        ));
    }

    let integration = if draft.integration.is_empty() {
        errors.push(FieldError::new(
            "integration",
            "required",
            "Pick an integration.",
        ));
        None
    } else {
        let found = catalog.integration(&draft.integration);
        if found.is_none() {
            errors.push(FieldError::new(
                "integration",
                "unknown",
                format!(
                    "There is no integration {:?}; GET /v1/integrations lists them.",
                    draft.integration
                ),
            ));
        }
        found
    };

    let auth_type = match AuthType::parse(&draft.auth_type) {
        Some(t) if integration.is_none_or(|i| i.auth_types().contains(&t)) => Some(t),
        Some(_) | None => {
            let supported = integration
                .map(|i| {
                    i.auth_types()
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "api_key".into());
            errors.push(FieldError::new(
                "auth_type",
                "unsupported",
                format!("Choose one of the integration's authentication types: {supported}."),
            ));
            None
        }
    };

    let mut services = BTreeMap::new();
    for (role_name, service_id) in &draft.services {
        let field = format!("services.{role_name}");
        let Some(role) = ServiceRole::parse(role_name) else {
            errors.push(FieldError::new(
                field,
                "unknown_role",
                "Roles are token_validation, user_id_mapper, action_callback_parser, webhook_parser and webhook_event_verification.",
            ));
            continue;
        };
        let found = catalog
            .service(service_id)
            .or_else(|| custom_services.iter().find(|s| &s.id == service_id));
        match found {
            None => errors.push(FieldError::new(
                field,
                "unknown",
                format!("There is no service {service_id:?}."),
            )),
            Some(s) if s.role != role => errors.push(FieldError::new(
                field,
                "wrong_role",
                format!(
                    "Service {service_id:?} is a {} service, not {role}.",
                    s.role
                ),
            )),
            Some(s) if integration.is_some_and(|i| !s.fits(&i.id)) => errors.push(FieldError::new(
                field,
                "wrong_integration",
                format!(
                    "Service {service_id:?} does not belong to {}.",
                    draft.integration
                ),
            )),
            Some(_) => {
                services.insert(role, service_id.clone());
            }
        }
    }
    if let Some(i) = integration {
        for role in ServiceRole::ALL {
            services
                .entry(role)
                .or_insert_with(|| i.defaults.get(role).to_string());
        }
    }

    let mut scopes = Vec::new();
    let mut seen_scopes = BTreeSet::new();
    if draft.scopes.len() > MAX_SCOPES {
        errors.push(FieldError::new(
            "scopes",
            "too_many",
            format!("Use at most {MAX_SCOPES} scopes."),
        ));
    }
    for (n, scope) in draft.scopes.iter().enumerate() {
        let s = scope.trim();
        if s.is_empty() || s.len() > 200 || !is_control_free(s) || s.contains(char::is_whitespace) {
            errors.push(FieldError::new(
                format!("scopes[{n}]"),
                "invalid",
                "A scope is 1 to 200 characters without spaces.",
            ));
        } else if seen_scopes.insert(s.to_string()) {
            scopes.push(s.to_string());
        }
    }

    let mut new_secrets = BTreeMap::new();
    let mut kept_secrets = BTreeSet::new();
    let mut plain_params = BTreeMap::new();
    let auth = auth_type.unwrap_or(AuthType::ApiKey);

    match draft.api_key {
        Some(key) => {
            if let Some(e) = check_value(
                catalog,
                integration,
                auth,
                API_KEY_FIELD,
                API_KEY_FIELD,
                key.expose_secret(),
            ) {
                errors.push(e);
            }
            new_secrets.insert(API_KEY_FIELD.to_string(), key);
        }
        None if stored_secrets.contains(API_KEY_FIELD) => {
            kept_secrets.insert(API_KEY_FIELD.to_string());
        }
        None => errors.push(FieldError::new(
            API_KEY_FIELD,
            "required",
            "Enter the API key.",
        )),
    }

    if draft.params.len() > MAX_PARAMS {
        errors.push(FieldError::new(
            "config_params",
            "too_many",
            format!("Use at most {MAX_PARAMS} config params."),
        ));
    }
    let key_re = &*PARAM_KEY;
    let mut seen_keys = BTreeSet::new();
    for (n, p) in draft.params.into_iter().enumerate() {
        if !key_re.is_match(&p.key) {
            errors.push(FieldError::new(
                format!("config_params[{n}].key"),
                "invalid",
                "A key starts with a letter or _ and has at most 64 letters, digits, _, . or -.",
            ));
            continue;
        }
        if p.key == API_KEY_FIELD {
            errors.push(FieldError::new(
                format!("config_params[{n}].key"),
                "reserved",
                "api_key is the credential's key; send it in the api_key field.",
            ));
            continue;
        }
        if !seen_keys.insert(p.key.clone()) {
            errors.push(FieldError::new(
                format!("config_params[{n}].key"),
                "duplicate",
                format!("The key {:?} appears more than once.", p.key),
            ));
            continue;
        }
        let field = format!("config_params.{}", p.key);
        if p.key == BASE_URL_PARAM && integration.is_some_and(|i| !i.allow_base_url_override) {
            errors.push(FieldError::new(
                field.clone(),
                "not_allowed",
                "This integration does not allow its base URL to be overridden.",
            ));
        }
        let declared = integration.and_then(|i| i.field(auth, &p.key));
        let secret = p.secret || declared.is_some_and(|f| f.secret);
        match p.value {
            Some(v) => {
                if let Some(e) = check_value(
                    catalog,
                    integration,
                    auth,
                    &p.key,
                    &field,
                    v.expose_secret(),
                ) {
                    errors.push(e);
                } else if p.key == BASE_URL_PARAM && !is_http_url(v.expose_secret()) {
                    errors.push(FieldError::new(
                        field,
                        "invalid",
                        "base_url must be an https:// URL (plain http only to hosts the operator allows).",
                    ));
                }
                if secret {
                    new_secrets.insert(p.key, v);
                } else {
                    plain_params.insert(p.key, v.expose_secret().to_string());
                }
            }
            None if secret && stored_secrets.contains(&p.key) => {
                kept_secrets.insert(p.key);
            }
            None => errors.push(FieldError::new(field, "required", "Enter a value.")),
        }
    }
    if let Some(i) = integration {
        for f in i.fields(auth).iter().skip(1) {
            if f.required && !seen_keys.contains(&f.name) {
                errors.push(FieldError::new(
                    format!("config_params.{}", f.name),
                    "required",
                    format!("{} is required for {}.", f.label, i.name),
                ));
            }
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(CheckedDraft {
        name,
        description: draft.description,
        integration: draft.integration,
        auth_type: auth,
        services,
        scopes,
        plain_params,
        new_secrets,
        kept_secrets,
    })
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|rest| {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !host.contains('@') && !host.contains(char::is_whitespace)
    })
}

/// Checks one value against length and the integration's pattern for it.
/// The message never contains the value.
fn check_value(
    catalog: &Catalog,
    integration: Option<&Integration>,
    auth: AuthType,
    name: &str,
    field: &str,
    value: &str,
) -> Option<FieldError> {
    if value.is_empty() {
        return Some(FieldError::new(field, "required", "Enter a value."));
    }
    if value.len() > MAX_VALUE {
        return Some(FieldError::new(
            field,
            "too_long",
            format!("Use at most {MAX_VALUE} bytes."),
        ));
    }
    if value.trim() != value {
        return Some(FieldError::new(
            field,
            "whitespace",
            "Remove the spaces or line breaks around the value.",
        ));
    }
    if !is_control_free(value) {
        return Some(FieldError::new(
            field,
            "invalid",
            "Remove control characters from the value.",
        ));
    }
    let i = integration?;
    let spec = i.field(auth, name)?;
    let re = catalog.pattern(&i.id, name)?;
    if re.is_match(value) {
        None
    } else {
        let help = spec
            .help
            .as_deref()
            .map(|h| format!(" {h}"))
            .unwrap_or_default();
        Some(FieldError::new(
            field,
            "pattern",
            format!(
                "This does not look like a {} for {}.{help}",
                spec.label,
                integration.map(|i| i.name.as_str()).unwrap_or("")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    fn twilio_draft() -> Draft {
        Draft {
            name: "Twilio prod".into(),
            description: "SMS".into(),
            integration: "twilio".into(),
            auth_type: "api_key".into(),
            services: BTreeMap::new(),
            api_key: Some(secret(&"a".repeat(32))),
            scopes: vec!["messaging".into()],
            params: vec![
                ParamInput {
                    key: "account_sid".into(),
                    value: Some(secret(&format!("AC{}", "0".repeat(32)))),
                    secret: false,
                },
                ParamInput {
                    key: "api_key_sid".into(),
                    value: Some(secret(&format!("SK{}", "0".repeat(32)))),
                    secret: false,
                },
            ],
        }
    }

    #[test]
    fn a_good_draft_takes_the_integration_defaults() {
        let catalog = Catalog::builtin().unwrap();
        let checked = check(&catalog, &[], twilio_draft(), &BTreeSet::new()).unwrap();
        assert_eq!(
            checked.services[&ServiceRole::WebhookEventVerification],
            "twilio.signature"
        );
        assert_eq!(checked.plain_params["account_sid"].len(), 34);
        assert!(checked.new_secrets.contains_key("api_key"));
    }

    #[test]
    fn every_problem_is_reported_at_once_without_the_secret() {
        let catalog = Catalog::builtin().unwrap();
        let mut d = twilio_draft();
        d.name = " ".into();
        d.api_key = Some(secret("not-a-twilio-key-SECRETVALUE"));
        d.params.remove(0);
        d.params.push(ParamInput {
            key: "webhook_secret".into(),
            value: Some(secret(&"f".repeat(32))),
            secret: false,
        });
        d.services
            .insert("webhook_parser".into(), "twilio.signature".into());
        let errors = check(&catalog, &[], d, &BTreeSet::new()).unwrap_err();
        let fields: Vec<_> = errors
            .iter()
            .map(|e| (e.field.as_str(), e.code.as_str()))
            .collect();
        assert!(fields.contains(&("name", "required")), "{fields:?}");
        assert!(fields.contains(&("api_key", "pattern")), "{fields:?}");
        assert!(
            fields.contains(&("config_params.account_sid", "required")),
            "{fields:?}"
        );
        assert!(
            fields.contains(&("services.webhook_parser", "wrong_role")),
            "{fields:?}"
        );
        assert!(errors.iter().all(|e| !e.message.contains("SECRETVALUE")));
    }

    #[test]
    fn a_declared_secret_param_is_secret_whatever_the_request_says() {
        let catalog = Catalog::builtin().unwrap();
        let mut d = twilio_draft();
        d.params.push(ParamInput {
            key: "webhook_secret".into(),
            value: Some(secret(&"f".repeat(32))),
            secret: false,
        });
        let checked = check(&catalog, &[], d, &BTreeSet::new()).unwrap();
        assert!(checked.new_secrets.contains_key("webhook_secret"));
        assert!(!checked.plain_params.contains_key("webhook_secret"));
    }

    #[test]
    fn an_absent_secret_is_kept_only_when_one_is_stored() {
        let catalog = Catalog::builtin().unwrap();
        let mut d = twilio_draft();
        d.api_key = None;
        let errors = check(&catalog, &[], d, &BTreeSet::new()).unwrap_err();
        assert_eq!(errors[0].field, "api_key");
        let mut d = twilio_draft();
        d.api_key = None;
        let stored = BTreeSet::from(["api_key".to_string()]);
        let checked = check(&catalog, &[], d, &stored).unwrap();
        assert!(checked.kept_secrets.contains("api_key"));
    }

    #[test]
    fn base_url_override_only_where_the_integration_allows_it() {
        let catalog = Catalog::builtin().unwrap();
        let github = Draft {
            name: "gh".into(),
            description: String::new(),
            integration: "github".into(),
            auth_type: "api_key".into(),
            services: BTreeMap::new(),
            api_key: Some(secret(&format!("ghp_{}", "a".repeat(36)))),
            scopes: vec![],
            params: vec![ParamInput {
                key: "base_url".into(),
                value: Some(secret("https://127.0.0.1:9")),
                secret: false,
            }],
        };
        let errors = check(&catalog, &[], github, &BTreeSet::new()).unwrap_err();
        assert_eq!(errors[0].code, "not_allowed");
        // Twilio allows regional edges.
        let mut d = twilio_draft();
        d.params.push(ParamInput {
            key: "base_url".into(),
            value: Some(secret("https://api.dublin.ie1.twilio.com")),
            secret: false,
        });
        assert!(check(&catalog, &[], d, &BTreeSet::new()).is_ok());
        let mut d = twilio_draft();
        d.params.push(ParamInput {
            key: "base_url".into(),
            value: Some(secret("ftp://x")),
            secret: false,
        });
        assert_eq!(
            check(&catalog, &[], d, &BTreeSet::new()).unwrap_err()[0].code,
            "invalid"
        );
    }
}
