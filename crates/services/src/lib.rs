//! Latchkey's config services: what each of a credential's five services
//! does, given its [`domain::spec::ServiceSpec`]. Token validation calls the
//! provider ([`validate`]); the rest are pure functions of a received request
//! ([`verify`], [`parse`]) or run tenant scripts in a sandbox ([`script`]).
//! Nothing here touches storage; secrets come in as [`secrecy::SecretString`]
//! and never appear in an error or a result.

pub mod parse;
pub mod script;
pub mod validate;
pub mod verify;

/// A request received on a credential's Webhook or Action URL, as the
/// services see it: the raw bytes, never a re-serialised form.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub method: String,
    /// The full URL as the provider called it: the public base URL, the path
    /// and the query string.
    pub url: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Receipt time, seconds since the Unix epoch.
    pub now: i64,
}

impl Inbound {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a query-string parameter.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.url.split_once('?').map(|(_, q)| q)?;
        let query = query.split('#').next().unwrap_or("");
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Whether the body is `application/x-www-form-urlencoded`.
    pub fn is_form(&self) -> bool {
        self.header("content-type").is_some_and(|c| {
            c.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
    }

    /// The body's form fields, in order (empty when it is not a form).
    pub fn form(&self) -> Vec<(String, String)> {
        if !self.is_form() {
            return Vec::new();
        }
        serde_urlencoded::from_bytes(&self.body).unwrap_or_default()
    }
}

/// One event in Latchkey's normal form, before user mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalEvent {
    pub valid_request: bool,
    pub app_user_id: Option<String>,
    pub event_type: String,
    /// The body as JSON (a form body becomes an object of its fields).
    pub payload: serde_json::Value,
    /// The provider's delivery id, used to drop repeated deliveries.
    pub delivery_id: Option<String>,
}
