//! The Token Validation Service: one HTTP request to the provider with the
//! credential applied the way its integration declares, judged by success
//! rules. It owns the outbound policy: only the integration's declared hosts
//! (or hosts the operator allows), no redirects followed, private, loopback
//! and link-local addresses refused unless the operator allows them, and
//! timeouts on everything. Results never contain a secret.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::{engine::general_purpose::STANDARD, Engine};
use domain::catalog::Apply;
use domain::spec::HttpCheck;
use domain::Integration;
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

/// What the operator allows beyond the catalog (`--allow-outbound`): host
/// names (exact, or `*.suffix`) and addresses or networks (`127.0.0.1`,
/// `10.0.0.0/8`). An allowed target may be private or loopback and may be
/// reached over plain http.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    hosts: Vec<String>,
    nets: Vec<IpNet>,
    pub timeout: Duration,
}

impl OutboundPolicy {
    pub fn new(entries: &[String], timeout: Duration) -> Result<OutboundPolicy, String> {
        let mut policy = OutboundPolicy {
            timeout,
            ..Default::default()
        };
        for e in entries {
            let e = e.trim();
            if let Ok(net) = e.parse::<IpNet>() {
                policy.nets.push(net);
            } else if let Ok(ip) = e.parse::<IpAddr>() {
                policy.nets.push(IpNet::from(ip));
            } else if !e.is_empty()
                && e.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-*".contains(c))
            {
                policy.hosts.push(e.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "--allow-outbound {e:?} is neither a host name nor an address or network"
                ));
            }
        }
        Ok(policy)
    }

    fn allows_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| host_matches(h, host))
            || host.parse::<IpAddr>().is_ok_and(|ip| self.allows_ip(ip))
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => pattern == host,
    }
}

/// An IPv4-mapped or -compatible IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Whether an address is on the public internet (not loopback, private,
/// link-local, shared, documentation, multicast or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0))
        }
    }
}

/// Resolves names for outbound calls and refuses any name that resolves to
/// an address the policy does not allow, so DNS cannot point a validation at
/// the inside of the network.
struct GuardedResolver {
    policy: Arc<OutboundPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("{host} does not resolve").into());
            }
            if let Some(bad) = addrs
                .iter()
                .find(|a| !is_public(a.ip()) && !policy.allows_ip(a.ip()))
            {
                return Err(format!(
                    "{host} resolves to {}, a private or loopback address",
                    bad.ip()
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The result of one validation. Messages are for people and never contain
/// a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Valid(String),
    /// The provider rejected the key; the message carries its reason.
    Invalid(String),
    /// No answer that says either way (network, timeout, provider error,
    /// refused by the outbound policy).
    Unreachable(String),
}

/// Runs Token Validation Services.
pub struct Validator {
    client: reqwest::Client,
    policy: Arc<OutboundPolicy>,
}

/// What a validation needs of a credential.
pub struct Subject<'a> {
    pub integration: &'a Integration,
    pub params: &'a BTreeMap<String, String>,
    pub secrets: &'a BTreeMap<String, SecretString>,
}

impl Validator {
    pub fn new(policy: OutboundPolicy) -> Result<Validator, String> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!(
                "Latchkey/",
                env!("CARGO_PKG_VERSION"),
                " (token validation)"
            ))
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .build()
            .map_err(|e| format!("cannot build the outbound client: {e}"))?;
        Ok(Validator { client, policy })
    }

    /// Calls the provider as `check` says (falling back to the integration's
    /// declared validation endpoint) and judges the answer.
    pub async fn validate(&self, check: &HttpCheck, s: &Subject<'_>) -> Outcome {
        match self.request(check, s) {
            Err(message) => Outcome::Unreachable(message),
            Ok(req) => {
                let url = req.url().clone();
                match self.client.execute(req).await {
                    Err(e) => Outcome::Unreachable(describe_error(&e, &url)),
                    Ok(res) => judge(check, s, res).await,
                }
            }
        }
    }

    /// The base URL a credential's outbound calls go to, or why the policy
    /// refuses it (a host the integration does not declare, plain http, a
    /// private address), in words for the person who set it.
    pub fn target(
        &self,
        i: &Integration,
        params: &BTreeMap<String, String>,
    ) -> Result<url::Url, String> {
        let base = match params.get(domain::credential::BASE_URL_PARAM) {
            Some(b) if i.allow_base_url_override => b.as_str(),
            _ => i.base_url.as_str(),
        };
        let base =
            url::Url::parse(base).map_err(|_| "the base URL is not a valid URL".to_string())?;
        let host = base.host_str().unwrap_or("").to_ascii_lowercase();
        let catalog_host = url::Url::parse(&i.base_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        let declared_host = catalog_host.as_deref() == Some(host.as_str())
            || i.hosts
                .iter()
                .any(|h| host_matches(&h.to_ascii_lowercase(), &host));
        let operator_allowed = self.policy.allows_host(&host);
        if !declared_host && !operator_allowed {
            return Err(format!(
                "{host} is not a host {} declares; Latchkey does not send keys there",
                i.name
            ));
        }
        if base.scheme() != "https" && !operator_allowed {
            return Err(format!("{host} must be reached over https"));
        }
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            if !is_public(ip) && !self.policy.allows_ip(ip) {
                return Err(format!(
                    "{ip} is a private or loopback address; the operator has not allowed it"
                ));
            }
        }
        Ok(base)
    }

    fn request(&self, check: &HttpCheck, s: &Subject<'_>) -> Result<reqwest::Request, String> {
        let i = s.integration;
        let declared = &i.api_key.validation;
        let base = self.target(i, s.params)?;
        let path = check.path.as_deref().unwrap_or(&declared.path);
        let path = fill(path, s, true)?;
        let mut url = base.clone();
        let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
        let (p, q) = joined
            .split_once('?')
            .map(|(p, q)| (p.to_string(), Some(q.to_string())))
            .unwrap_or((joined, None));
        url.set_path(&p);
        url.set_query(q.as_deref());
        let method = check.method.as_deref().unwrap_or(&declared.method);
        let method =
            reqwest::Method::from_bytes(method.as_bytes()).map_err(|_| "bad method".to_string())?;
        let mut req = self.client.request(method, url);
        for (k, v) in &check.headers {
            req = req.header(k, fill(v, s, false)?);
        }
        if let Some(body) = &check.body {
            req = req.body(fill(body, s, false)?);
        }
        req = match &i.api_key.apply {
            Apply::Header { name, value } => req.header(name, fill(value, s, false)?),
            Apply::Query { name, value } => {
                req.query(&[(name.as_str(), fill(value, s, false)?.as_str())])
            }
            Apply::Basic { username, password } => {
                let raw = format!(
                    "{}:{}",
                    fill(username, s, false)?,
                    fill(password, s, false)?
                );
                req.header("Authorization", format!("Basic {}", STANDARD.encode(raw)))
            }
        };
        req.header("Accept", "application/json")
            .build()
            .map_err(|e| format!("cannot build the request: {e}"))
    }
}

/// Replaces `${field}` with the credential's value (secret or plain),
/// percent-encoding it when it goes into a path.
fn fill(template: &str, s: &Subject<'_>, in_path: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or("unclosed ${ in a template")?;
        let name = &after[..end];
        let value = s
            .secrets
            .get(name)
            .map(|v| v.expose_secret().to_string())
            .or_else(|| s.params.get(name).cloned())
            .ok_or_else(|| format!("the credential has no {name}"))?;
        if in_path {
            out.extend(url::form_urlencoded::byte_serialize(value.as_bytes()));
        } else {
            out.push_str(&value);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn describe_error(e: &reqwest::Error, url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("the provider");
    if e.is_timeout() {
        format!("{host} did not answer in time")
    } else if e.is_connect() {
        let mut cause: Option<&dyn std::error::Error> = Some(e);
        let mut last = String::new();
        while let Some(c) = cause {
            last = c.to_string();
            cause = c.source();
        }
        format!("cannot connect to {host}: {last}")
    } else {
        format!("the request to {host} failed")
    }
}

async fn judge(check: &HttpCheck, s: &Subject<'_>, res: reqwest::Response) -> Outcome {
    let status = res.status();
    let declared = &s.integration.api_key.validation;
    let success = check
        .success_status
        .as_ref()
        .unwrap_or(&declared.success_status);
    if status.is_redirection() {
        let to = res
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .and_then(|l| url::Url::parse(l).ok())
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| "elsewhere".into());
        return Outcome::Unreachable(format!(
            "the provider redirected to {to}; redirects are not followed"
        ));
    }
    let body = res.bytes().await.unwrap_or_default();
    let body = &body[..body.len().min(64 * 1024)];
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let name = &s.integration.name;
    if success.contains(&status.as_u16()) {
        if let Some(rule) = &check.success_json {
            let found = json.as_ref().and_then(|j| {
                crate::parse::parse_json_path(&rule.path)
                    .and_then(|p| p.query(j).at_most_one().ok().flatten().cloned())
            });
            if found.as_ref() != Some(&rule.equals) {
                let reason = json
                    .as_ref()
                    .and_then(reason_of)
                    .unwrap_or_else(|| "the answer did not confirm the key".into());
                return Outcome::Invalid(scrub(&format!("{name} rejected the key: {reason}"), s));
            }
        }
        return Outcome::Valid(format!(
            "{name} accepted the key (HTTP {}).",
            status.as_u16()
        ));
    }
    if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
        return Outcome::Unreachable(format!(
            "{name} answered HTTP {}; try again later",
            status.as_u16()
        ));
    }
    let reason = json
        .as_ref()
        .and_then(reason_of)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("rejected").to_string());
    Outcome::Invalid(scrub(
        &format!(
            "{name} rejected the key (HTTP {}): {reason}",
            status.as_u16()
        ),
        s,
    ))
}

/// The provider's own words for a failure, from the usual places.
fn reason_of(j: &serde_json::Value) -> Option<String> {
    let candidates = [
        j.pointer("/error/message"),
        j.get("message"),
        j.get("error_description"),
        j.get("detail"),
        j.pointer("/errors/0/message"),
        j.get("error"),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|v| v.as_str())
        .map(|s| {
            let s: String = s.chars().filter(|c| !c.is_control()).take(300).collect();
            s
        })
}

/// Removes every secret value of the credential from a message.
fn scrub(message: &str, s: &Subject<'_>) -> String {
    let mut out = message.to_string();
    for v in s.secrets.values() {
        let v = v.expose_secret();
        if v.len() >= 4 {
            out = out.replace(v, "[redacted]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_and_mapped_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn the_policy_allows_what_the_operator_names() {
        let p = OutboundPolicy::new(
            &[
                "127.0.0.1".into(),
                "10.0.0.0/8".into(),
                "*.corp.test".into(),
            ],
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(p.allows_host("127.0.0.1"));
        assert!(p.allows_ip("::ffff:127.0.0.1".parse().unwrap()));
        assert!(p.allows_ip("10.9.8.7".parse().unwrap()));
        assert!(p.allows_host("api.corp.test"));
        assert!(!p.allows_host("corp.test"));
        assert!(!p.allows_host("evilcorp.test"));
        assert!(OutboundPolicy::new(&["not a host!".into()], Duration::from_secs(1)).is_err());
    }

    /// A host name the operator allows still may not resolve to a private
    /// address the operator did not allow: DNS cannot move a check inside.
    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        let policy = OutboundPolicy::new(&["localhost".into()], Duration::from_secs(2)).unwrap();
        let validator = Validator::new(policy).unwrap();
        let catalog = domain::Catalog::builtin().unwrap();
        let twilio = catalog.integration("twilio").unwrap();
        let params = BTreeMap::from([
            ("base_url".to_string(), "http://localhost:9".to_string()),
            ("account_sid".to_string(), format!("AC{}", "0".repeat(32))),
            ("api_key_sid".to_string(), format!("SK{}", "0".repeat(32))),
        ]);
        let secrets = BTreeMap::from([("api_key".to_string(), SecretString::from("k".repeat(32)))]);
        let outcome = validator
            .validate(
                &HttpCheck::default(),
                &Subject {
                    integration: twilio,
                    params: &params,
                    secrets: &secrets,
                },
            )
            .await;
        match outcome {
            Outcome::Unreachable(m) => assert!(m.contains("private or loopback"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// Literal private, loopback, link-local and IPv4-mapped addresses in a
    /// base URL are refused before any connection, unless the operator
    /// allowed that address.
    #[tokio::test]
    async fn literal_private_addresses_are_refused_unless_allowed() {
        let catalog = domain::Catalog::builtin().unwrap();
        let twilio = catalog.integration("twilio").unwrap();
        let secrets = BTreeMap::from([("api_key".to_string(), SecretString::from("k".repeat(32)))]);
        let check = |allow: Vec<String>, base: &'static str| {
            let secrets = &secrets;
            async move {
                let policy = OutboundPolicy::new(&allow, Duration::from_millis(500)).unwrap();
                let params = BTreeMap::from([
                    ("base_url".to_string(), base.to_string()),
                    ("account_sid".to_string(), format!("AC{}", "0".repeat(32))),
                    ("api_key_sid".to_string(), format!("SK{}", "0".repeat(32))),
                ]);
                Validator::new(policy)
                    .unwrap()
                    .validate(
                        &HttpCheck::default(),
                        &Subject {
                            integration: twilio,
                            params: &params,
                            secrets,
                        },
                    )
                    .await
            }
        };
        for base in [
            "https://10.0.0.1",
            "https://172.16.5.4",
            "https://192.168.1.1",
            "https://127.0.0.1:9",
            "https://169.254.169.254",
            "https://[::1]:9",
            "https://[fe80::1]",
            "https://[::ffff:127.0.0.1]:9",
            "https://[::ffff:169.254.169.254]",
        ] {
            match check(Vec::new(), base).await {
                Outcome::Unreachable(m) => assert!(
                    m.contains("does not send keys there") || m.contains("private or loopback"),
                    "{base}: {m}"
                ),
                other => panic!("{base}: {other:?}"),
            }
        }
        // Allowed by the operator, the same address is tried (and here
        // refuses the connection: nothing listens on port 9).
        match check(vec!["127.0.0.1".into()], "http://127.0.0.1:9").await {
            Outcome::Unreachable(m) => assert!(
                !m.contains("does not send keys there") && !m.contains("private or loopback"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wildcard_hosts_match_subdomains_only() {
        assert!(host_matches("*.twilio.com", "api.dublin.ie1.twilio.com"));
        assert!(!host_matches("*.twilio.com", "twilio.com"));
        assert!(!host_matches("*.twilio.com", "eviltwilio.com"));
        assert!(host_matches("api.twilio.com", "api.twilio.com"));
    }
}
