//! The catalog of integrations and built-in services. It owns the file format of
//! `catalog/` and every rule a catalog entry must satisfy; it does no I/O (the
//! files are compiled in by `build.rs`).

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::spec::ServiceSpec;
use crate::{AuthType, ServiceRole};

include!(concat!(env!("OUT_DIR"), "/catalog_files.rs"));

/// How a credential's secret is applied to an outbound request. Templates use
/// `${field}` placeholders naming the auth type's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Apply {
    /// A request header, e.g. `Authorization: Bearer ${api_key}`.
    Header { name: String, value: String },
    /// A query parameter, e.g. `?api_key=${api_key}`.
    Query { name: String, value: String },
    /// HTTP basic authentication.
    Basic { username: String, password: String },
}

impl Apply {
    fn templates(&self) -> Vec<&str> {
        match self {
            Apply::Header { value, .. } | Apply::Query { value, .. } => vec![value],
            Apply::Basic { username, password } => vec![username, password],
        }
    }
}

/// The cheapest authenticated read of a provider, called by its Token
/// Validation Service: a path on the integration's base URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidationEndpoint {
    #[serde(default = "default_method")]
    pub method: String,
    pub path: String,
    #[serde(default = "default_success")]
    pub success_status: Vec<u16>,
}

fn default_method() -> String {
    "GET".into()
}
fn default_success() -> Vec<u16> {
    vec![200]
}

/// One input of an auth type: the key itself or a config param it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    pub label: String,
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub required: bool,
    /// A regular expression the whole value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

/// What an integration declares for the API Key auth type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// The first field is always `api_key`; the rest are config params.
    pub fields: Vec<FieldSpec>,
    pub apply: Apply,
    pub validation: ValidationEndpoint,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// What an integration declares about the webhooks it sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// The signature scheme its deliveries carry (e.g. `stripe`, `standard_webhooks`).
    pub scheme: String,
}

/// The default service for each of the five roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleDefaults {
    pub token_validation: String,
    pub user_id_mapper: String,
    pub action_callback_parser: String,
    pub webhook_parser: String,
    pub webhook_event_verification: String,
}

impl RoleDefaults {
    pub fn get(&self, role: ServiceRole) -> &str {
        match role {
            ServiceRole::TokenValidation => &self.token_validation,
            ServiceRole::UserIdMapper => &self.user_id_mapper,
            ServiceRole::ActionCallbackParser => &self.action_callback_parser,
            ServiceRole::WebhookParser => &self.webhook_parser,
            ServiceRole::WebhookEventVerification => &self.webhook_event_verification,
        }
    }
}

/// One app of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Integration {
    pub id: String,
    pub name: String,
    pub description: String,
    pub base_url: String,
    /// Hosts outbound calls may go to; the base URL's host is always one.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Whether a credential may point the base URL elsewhere with a `base_url` config param.
    #[serde(default)]
    pub allow_base_url_override: bool,
    pub api_key: ApiKeySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<WebhookSpec>,
    pub defaults: RoleDefaults,
    /// Services that belong to this integration only.
    #[serde(default, skip_serializing)]
    pub services: Vec<ServiceDef>,
}

impl Integration {
    pub fn auth_types(&self) -> Vec<AuthType> {
        vec![AuthType::ApiKey]
    }

    pub fn fields(&self, auth_type: AuthType) -> &[FieldSpec] {
        match auth_type {
            AuthType::ApiKey => &self.api_key.fields,
        }
    }

    pub fn field(&self, auth_type: AuthType, name: &str) -> Option<&FieldSpec> {
        self.fields(auth_type).iter().find(|f| f.name == name)
    }

    pub fn sends_webhooks(&self) -> bool {
        self.webhooks.is_some()
    }

    /// A JSON Schema (2020-12) of the credential fields this auth type takes.
    pub fn fields_schema(&self, auth_type: AuthType) -> serde_json::Value {
        let mut props = serde_json::Map::new();
        let mut required = Vec::new();
        for f in self.fields(auth_type) {
            let mut p = serde_json::json!({ "type": "string", "title": f.label });
            if let Some(pat) = &f.pattern {
                p["pattern"] = pat.clone().into();
            }
            if let Some(help) = &f.help {
                p["description"] = help.clone().into();
            }
            if f.secret {
                p["writeOnly"] = true.into();
            }
            props.insert(f.name.clone(), p);
            if f.required {
                required.push(f.name.clone());
            }
        }
        serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": { "type": "string" },
        })
    }
}

/// A named implementation of one role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    pub id: String,
    pub name: String,
    pub role: ServiceRole,
    #[serde(default)]
    pub description: String,
    /// Integrations this service fits; `["*"]` means any.
    #[serde(default)]
    pub integrations: Vec<String>,
    /// What the service does.
    pub spec: ServiceSpec,
}

impl ServiceDef {
    pub fn fits(&self, integration: &str) -> bool {
        self.integrations
            .iter()
            .any(|i| i == "*" || i == integration)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicesFile {
    services: Vec<ServiceDef>,
}

/// A catalog file that breaks a rule; the message names the file and the rule.
#[derive(Debug, thiserror::Error)]
#[error("catalog file {file}: {message}")]
pub struct CatalogError {
    pub file: String,
    pub message: String,
}

/// The loaded, checked catalog. Integrations in id order.
#[derive(Debug, Clone)]
pub struct Catalog {
    integrations: BTreeMap<String, Integration>,
    services: BTreeMap<String, ServiceDef>,
    /// Each field pattern compiled once, anchored, by (integration, field).
    patterns: BTreeMap<(String, String), Regex>,
}

static ID_RE: &str = r"^[a-z0-9][a-z0-9._-]{0,62}$";

impl Catalog {
    /// The catalog compiled into this binary.
    pub fn builtin() -> Result<Catalog, CatalogError> {
        Catalog::from_files(CATALOG_FILES.iter().copied())
    }

    /// Parses and checks catalog files given as `(path, content)`.
    pub fn from_files<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Catalog, CatalogError> {
        let mut integrations = BTreeMap::new();
        let mut services = BTreeMap::new();
        let mut add_service = |file: &str, s: ServiceDef| -> Result<(), CatalogError> {
            let err = |message: String| CatalogError {
                file: file.into(),
                message,
            };
            if !Regex::new(ID_RE).unwrap().is_match(&s.id) {
                return Err(err(format!("service id {:?} must match {ID_RE}", s.id)));
            }
            if let Err(errors) = s.spec.check(s.role) {
                let text: Vec<String> = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect();
                return Err(err(format!("service {:?}: {}", s.id, text.join("; "))));
            }
            if services.insert(s.id.clone(), s.clone()).is_some() {
                return Err(err(format!("service id {:?} is declared twice", s.id)));
            }
            Ok(())
        };
        let mut pending = Vec::new();
        for (file, text) in files {
            let err = |message: String| CatalogError {
                file: file.into(),
                message,
            };
            if file.starts_with("services/") {
                let parsed: ServicesFile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
                for s in parsed.services {
                    add_service(file, s)?;
                }
                continue;
            }
            let mut integration: Integration =
                toml::from_str(text).map_err(|e| err(e.to_string()))?;
            for s in std::mem::take(&mut integration.services) {
                if s.integrations.is_empty() || s.integrations == [integration.id.clone()] {
                    add_service(
                        file,
                        ServiceDef {
                            integrations: vec![integration.id.clone()],
                            ..s
                        },
                    )?;
                } else {
                    return Err(err(format!(
                        "service {:?} in an integration file may name only that integration",
                        s.id
                    )));
                }
            }
            let expected = format!("integrations/{}.toml", integration.id);
            if file != expected {
                return Err(err(format!(
                    "an integration with id {:?} belongs in {expected}",
                    integration.id
                )));
            }
            pending.push((file.to_string(), integration));
        }
        for (file, integration) in pending {
            check_integration(&integration, &services).map_err(|message| CatalogError {
                file: file.clone(),
                message,
            })?;
            if integrations
                .insert(integration.id.clone(), integration)
                .is_some()
            {
                return Err(CatalogError {
                    file,
                    message: "integration declared twice".into(),
                });
            }
        }
        let mut patterns = BTreeMap::new();
        for i in integrations.values() {
            for f in &i.api_key.fields {
                if let Some(p) = &f.pattern {
                    let re = Regex::new(&format!("^(?:{p})$")).map_err(|e| CatalogError {
                        file: format!("integrations/{}.toml", i.id),
                        message: format!("field {:?} has a bad pattern: {e}", f.name),
                    })?;
                    patterns.insert((i.id.clone(), f.name.clone()), re);
                }
            }
        }
        Ok(Catalog {
            integrations,
            services,
            patterns,
        })
    }

    pub fn integrations(&self) -> impl Iterator<Item = &Integration> {
        self.integrations.values()
    }

    /// The compiled, anchored pattern of a field, if it declares one.
    pub fn pattern(&self, integration: &str, field: &str) -> Option<&Regex> {
        self.patterns
            .get(&(integration.to_string(), field.to_string()))
    }

    pub fn integration(&self, id: &str) -> Option<&Integration> {
        self.integrations.get(id)
    }

    pub fn service(&self, id: &str) -> Option<&ServiceDef> {
        self.services.get(id)
    }

    /// Services, optionally only those that fit an integration and/or a role.
    pub fn services<'a>(
        &'a self,
        integration: Option<&'a str>,
        role: Option<ServiceRole>,
    ) -> impl Iterator<Item = &'a ServiceDef> + 'a {
        self.services.values().filter(move |s| {
            integration.is_none_or(|i| s.fits(i)) && role.is_none_or(|r| s.role == r)
        })
    }

    /// Ids of integrations whose display name or id contains `needle` (lowercase).
    pub fn integrations_matching(&self, needle_lower: &str) -> Vec<String> {
        self.integrations
            .values()
            .filter(|i| i.name.to_lowercase().contains(needle_lower) || i.id.contains(needle_lower))
            .map(|i| i.id.clone())
            .collect()
    }
}

fn check_integration(
    i: &Integration,
    services: &BTreeMap<String, ServiceDef>,
) -> Result<(), String> {
    if !Regex::new(ID_RE).unwrap().is_match(&i.id) {
        return Err(format!("integration id {:?} must match {ID_RE}", i.id));
    }
    if i.name.trim().is_empty() || i.description.trim().is_empty() {
        return Err("name and description must not be empty".into());
    }
    if !i.base_url.starts_with("https://") {
        return Err(format!("base_url {:?} must be an https:// URL", i.base_url));
    }
    let fields = &i.api_key.fields;
    match fields.first() {
        Some(f) if f.name == "api_key" && f.secret && f.required => {}
        _ => {
            return Err(
                "api_key.fields must start with a required secret field named api_key".into(),
            )
        }
    }
    let mut names = BTreeSet::new();
    let field_name = Regex::new(r"^[a-z][a-z0-9_]{0,63}$").expect("static regex");
    for f in fields {
        if !names.insert(f.name.as_str()) {
            return Err(format!("field {:?} is declared twice", f.name));
        }
        if !field_name.is_match(&f.name) {
            return Err(format!("field name {:?} must be snake_case", f.name));
        }
        if let Some(p) = &f.pattern {
            Regex::new(p).map_err(|e| format!("field {:?} has a bad pattern: {e}", f.name))?;
        }
    }
    if i.webhooks.is_some() {
        match i.field(AuthType::ApiKey, "webhook_secret") {
            Some(f) if f.secret && !f.required => {}
            _ => {
                return Err(
                    "an integration that sends webhooks must declare an optional secret field webhook_secret"
                        .into(),
                )
            }
        }
    }
    let placeholder = Regex::new(r"\$\{([a-z0-9_]+)\}").unwrap();
    let mut templates = i.api_key.apply.templates();
    templates.push(&i.api_key.validation.path);
    for t in templates {
        for cap in placeholder.captures_iter(t) {
            let name = &cap[1];
            match i.field(AuthType::ApiKey, name) {
                Some(f) if f.required => {}
                Some(_) => return Err(format!("template {t:?} uses optional field {name:?}")),
                None => return Err(format!("template {t:?} uses undeclared field {name:?}")),
            }
        }
    }
    if !i.api_key.validation.path.starts_with('/') {
        return Err("api_key.validation.path must start with /".into());
    }
    for role in ServiceRole::ALL {
        let id = i.defaults.get(role);
        match services.get(id) {
            None => return Err(format!("default {role} service {id:?} does not exist")),
            Some(s) if s.role != role => {
                return Err(format!("default {role} service {id:?} has role {}", s.role))
            }
            Some(s) if !s.fits(&i.id) => {
                return Err(format!(
                    "default {role} service {id:?} does not fit {}",
                    i.id
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_loads_and_has_the_required_integrations() {
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        for id in [
            "twilio",
            "stripe",
            "github",
            "slack",
            "sendgrid",
            "openai",
            "shopify",
            "hubspot",
            "mailchimp",
            "airtable",
            "notion",
            "linear",
            "pagerduty",
            "datadog",
            "zendesk",
            "standard-webhooks",
        ] {
            assert!(
                catalog.integration(id).is_some(),
                "missing integration {id}"
            );
        }
        let twilio = catalog.integration("twilio").unwrap();
        for f in ["account_sid", "api_key_sid", "webhook_secret"] {
            assert!(
                twilio.field(AuthType::ApiKey, f).is_some(),
                "twilio lacks {f}"
            );
        }
        assert!(catalog.integration("slack").unwrap().sends_webhooks());
    }

    #[test]
    fn a_default_service_of_the_wrong_role_is_refused() {
        let services = "services = [{ id = \"identity\", name = \"Identity\", role = \"user_id_mapper\", integrations = [\"*\"], spec = { kind = \"identity\" } }]";
        let integration = r#"
            id = "demo"
            name = "Demo"
            description = "d"
            base_url = "https://api.demo.test"
            [api_key]
            fields = [{ name = "api_key", label = "Key", secret = true, required = true }]
            apply = { kind = "header", name = "Authorization", value = "Bearer ${api_key}" }
            validation = { path = "/me" }
            [defaults]
            token_validation = "identity"
            user_id_mapper = "identity"
            action_callback_parser = "identity"
            webhook_parser = "identity"
            webhook_event_verification = "identity"
        "#;
        let err = Catalog::from_files([
            ("services/generic.toml", services),
            ("integrations/demo.toml", integration),
        ])
        .unwrap_err();
        assert!(err.message.contains("has role user_id_mapper"), "{err}");
    }

    #[test]
    fn a_template_naming_an_undeclared_field_is_refused() {
        let services = "services = []";
        let integration = r#"
            id = "demo"
            name = "Demo"
            description = "d"
            base_url = "https://api.demo.test"
            [api_key]
            fields = [{ name = "api_key", label = "Key", secret = true, required = true }]
            apply = { kind = "header", name = "Authorization", value = "Bearer ${token}" }
            validation = { path = "/me" }
            [defaults]
            token_validation = "x"
            user_id_mapper = "x"
            action_callback_parser = "x"
            webhook_parser = "x"
            webhook_event_verification = "x"
        "#;
        let err = Catalog::from_files([
            ("services/generic.toml", services),
            ("integrations/demo.toml", integration),
        ])
        .unwrap_err();
        assert!(err.message.contains("undeclared field \"token\""), "{err}");
    }
}
