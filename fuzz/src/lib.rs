//! Shared input format of the request-shaped fuzz targets (`verify_signature`,
//! `parse_webhook`, `parse_action`, `value_expr`), and the specs they build
//! from it. The format is text-like on purpose, so that libFuzzer's
//! mutations of the seed corpus (real signed deliveries) stay close to real
//! requests:
//!
//! ```text
//! byte 0          selector: the target picks a scheme / parser with it (modulo its count)
//! then text lines (lossy UTF-8, '\n'-separated) up to the first empty line:
//!   line 1        METHOD URL
//!   line 2        receipt time, seconds since the epoch
//!   "@key value"  a setting: the secret, a scheme's or a declarative parser's fields
//!   "name: value" a header (name lower-cased, as the server hands them on)
//! then the body: every byte after the empty line, raw
//! ```
//!
//! [`encode`] writes the same format (used by `examples/make_seeds.rs`).

use domain::spec::{
    Encoding, Handshake, HmacAlgorithm, HmacScheme, JsonAction, JsonEvents, ServiceSpec,
};
use services::Inbound;

pub const DEFAULT_URL: &str = "https://latchkey.example/hooks/cred_fuzz";
pub const DEFAULT_NOW: i64 = 1_700_000_000;

/// One decoded fuzz input.
#[derive(Debug, Clone)]
pub struct Case {
    pub selector: u8,
    /// `@key value` settings, in order.
    pub settings: Vec<(String, String)>,
    pub req: Inbound,
}

impl Case {
    /// The first value of a setting.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a setting.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.settings
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn owned(&self, key: &str) -> Option<String> {
        self.get(key).map(str::to_string)
    }

    /// `@tolerance N`, else the specs' default of 300 s. Any u64 is allowed:
    /// the window check must not overflow.
    pub fn tolerance(&self) -> u64 {
        self.get("tolerance")
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(300)
    }

    /// The eight signature schemes of `services::verify`, by selector.
    pub fn signature_spec(&self) -> ServiceSpec {
        let tolerance_secs = self.tolerance();
        match self.selector % 8 {
            0 => ServiceSpec::TwilioSignature,
            1 => ServiceSpec::StripeSignature { tolerance_secs },
            2 => ServiceSpec::GithubSignature,
            3 => ServiceSpec::SlackSignature { tolerance_secs },
            4 => ServiceSpec::ShopifySignature,
            5 => ServiceSpec::StandardWebhooksSignature { tolerance_secs },
            6 => ServiceSpec::SendgridSignature { tolerance_secs },
            _ => ServiceSpec::HmacSignature(self.hmac_scheme()),
        }
    }

    /// The generic HMAC scheme, every field from a setting.
    pub fn hmac_scheme(&self) -> HmacScheme {
        HmacScheme {
            algorithm: match self.get("alg") {
                Some("sha1") => HmacAlgorithm::Sha1,
                Some("sha512") => HmacAlgorithm::Sha512,
                _ => HmacAlgorithm::Sha256,
            },
            header: self.owned("header").unwrap_or_else(|| "X-Signature".into()),
            encoding: match self.get("encoding") {
                Some("base64") => Encoding::Base64,
                _ => Encoding::Hex,
            },
            prefix: self.owned("prefix").unwrap_or_default(),
            content: self.owned("content").unwrap_or_else(|| "{body}".into()),
            timestamp_header: self.owned("timestamp_header"),
            id_header: self.owned("id_header"),
            tolerance_secs: self.tolerance(),
            timestamp_in_millis: self.get("millis").is_some(),
        }
    }

    /// The six webhook parsers of `services::parse`, by selector.
    pub fn webhook_parser_spec(&self) -> ServiceSpec {
        match self.selector % 6 {
            0 => ServiceSpec::StripeEvents,
            1 => ServiceSpec::GithubEvents,
            2 => ServiceSpec::SlackEvents,
            3 => ServiceSpec::TwilioEvents,
            4 => ServiceSpec::StandardWebhooksEvents {
                app_user_id: self.owned("app_user_id"),
            },
            _ => ServiceSpec::JsonEvents(JsonEvents {
                event_type: self.owned("event_type").unwrap_or_else(|| "$.type".into()),
                app_user_id: self.owned("app_user_id"),
                delivery_id: self.owned("delivery_id"),
                handshake: self.owned("echo").map(|echo| Handshake {
                    echo,
                    when: self.owned("when"),
                    equals: self.owned("equals"),
                }),
            }),
        }
    }

    /// The two action callback parsers of `services::parse`, by selector.
    pub fn action_parser_spec(&self) -> ServiceSpec {
        match self.selector % 2 {
            0 => ServiceSpec::SlackInteractivity,
            _ => ServiceSpec::JsonAction(JsonAction {
                action_type: self.owned("action_type").unwrap_or_else(|| "$.type".into()),
                action_id: self.owned("action_id"),
                value: self.owned("value"),
                app_user_id: self.owned("app_user_id"),
                response_url: self.owned("response_url"),
                delivery_id: self.owned("delivery_id"),
            }),
        }
    }
}

/// Reads a fuzz input; `None` when it is empty.
pub fn decode(data: &[u8]) -> Option<Case> {
    let (&selector, rest) = data.split_first()?;
    let (head, body) = match find(rest, b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (rest, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split('\n');
    let (method, url) = match lines.next().and_then(|l| l.split_once(' ')) {
        Some((m, u)) => (m.to_string(), u.to_string()),
        None => ("POST".to_string(), DEFAULT_URL.to_string()),
    };
    let now = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(DEFAULT_NOW);
    let mut settings = Vec::new();
    let mut headers = Vec::new();
    for line in lines {
        if let Some(setting) = line.strip_prefix('@') {
            let (k, v) = setting.split_once(' ').unwrap_or((setting, ""));
            settings.push((k.to_string(), v.to_string()));
        } else if let Some((name, value)) = line.split_once(':') {
            // As hyper hands them on: lower-case names, values trimmed.
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    Some(Case {
        selector,
        settings,
        req: Inbound {
            method,
            url,
            headers,
            body: body.to_vec(),
            now,
        },
    })
}

/// Writes a case in the format [`decode`] reads.
pub fn encode(case: &Case) -> Vec<u8> {
    let mut out = vec![case.selector];
    let mut head = format!("{} {}\n{}\n", case.req.method, case.req.url, case.req.now);
    for (k, v) in &case.settings {
        head.push_str(&format!("@{k} {v}\n"));
    }
    for (k, v) in &case.req.headers {
        head.push_str(&format!("{k}: {v}\n"));
    }
    out.extend_from_slice(head.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&case.req.body);
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The body as the value expressions see it: a form body as an object of
/// its fields, else the JSON body, else `null`.
pub fn body_json(req: &Inbound) -> serde_json::Value {
    if req.is_form() {
        let mut fields = serde_json::Map::new();
        for (k, v) in req.form() {
            fields.entry(k).or_insert(serde_json::Value::String(v));
        }
        return serde_json::Value::Object(fields);
    }
    serde_json::from_slice(&req.body).unwrap_or(serde_json::Value::Null)
}
