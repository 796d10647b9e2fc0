//! Webhook event verification: decides whether a delivery on a credential's
//! Webhook URL was signed by the provider, for every signature scheme a
//! [`ServiceSpec`] can name. It works on the raw bytes received, compares
//! signatures only in constant time after a length check, never lets a
//! delivery through without a secret, and never puts a secret or a presented
//! signature into a [`Rejection`].

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use domain::spec::{Encoding, HmacAlgorithm, HmacScheme, ServiceSpec};
use domain::ServiceRole;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use secrecy::{ExposeSecret, SecretString};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::{Choice, ConstantTimeEq};

use crate::Inbound;

/// Why a delivery was refused. Display text is a short human reason that
/// never contains the secret or the signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("missing {0} header")]
    MissingHeader(String),
    #[error("malformed signature header: {0}")]
    Malformed(String),
    #[error("timestamp outside the {0} s window")]
    StaleTimestamp(u64),
    /// Further in the future than the tolerance.
    #[error("timestamp is in the future")]
    FutureTimestamp,
    /// Also given when a SendGrid verification key cannot be read: like a
    /// wrong HMAC secret, it can never match.
    #[error("signature does not match")]
    BadSignature,
    #[error("the credential has no webhook_secret, so deliveries are refused")]
    NoSecret,
    #[error("this service is not a signature scheme")]
    NotAScheme,
}

impl Rejection {
    /// A stable snake_case code for API answers and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MissingHeader(_) => "missing_header",
            Rejection::Malformed(_) => "malformed_signature",
            Rejection::StaleTimestamp(_) => "stale_timestamp",
            Rejection::FutureTimestamp => "future_timestamp",
            Rejection::BadSignature => "bad_signature",
            Rejection::NoSecret => "no_secret",
            Rejection::NotAScheme => "not_a_scheme",
        }
    }
}

/// Verifies `req` with the scheme of `spec` and the credential's webhook secret.
pub fn verify(
    spec: &ServiceSpec,
    secret: Option<&SecretString>,
    req: &Inbound,
) -> Result<(), Rejection> {
    if spec.role() != Some(ServiceRole::WebhookEventVerification) {
        return Err(Rejection::NotAScheme);
    }
    let secret = secret
        .map(|s| s.expose_secret())
        .filter(|s| !s.trim().is_empty())
        .ok_or(Rejection::NoSecret)?;
    let key = secret.as_bytes();
    match spec {
        ServiceSpec::TwilioSignature => twilio(key, req),
        ServiceSpec::StripeSignature { tolerance_secs } => stripe(key, *tolerance_secs, req),
        ServiceSpec::GithubSignature => {
            let presented = presented(req, "X-Hub-Signature-256", "sha256=", Encoding::Hex)?;
            let expected = hmac_bytes(HmacAlgorithm::Sha256, key, &[&req.body]);
            accept(ct_eq(&expected, &presented))
        }
        ServiceSpec::SlackSignature { tolerance_secs } => slack(key, *tolerance_secs, req),
        ServiceSpec::ShopifySignature => {
            let presented = presented(req, "X-Shopify-Hmac-Sha256", "", Encoding::Base64)?;
            let expected = hmac_bytes(HmacAlgorithm::Sha256, key, &[&req.body]);
            accept(ct_eq(&expected, &presented))
        }
        ServiceSpec::StandardWebhooksSignature { tolerance_secs } => {
            standard_webhooks(secret, *tolerance_secs, req)
        }
        ServiceSpec::HmacSignature(scheme) => generic(scheme, key, req),
        ServiceSpec::SendgridSignature { tolerance_secs } => sendgrid(secret, *tolerance_secs, req),
        _ => Err(Rejection::NotAScheme),
    }
}

/// Twilio signs the URL followed by the form fields (sorted, name then
/// value), or, for a JSON body, the URL alone with the body's SHA-256 in its
/// `bodySHA256` parameter.
fn twilio(token: &[u8], req: &Inbound) -> Result<(), Rejection> {
    let presented = presented(req, "X-Twilio-Signature", "", Encoding::Base64)?;
    if let Some(claimed) = req.query("bodySHA256") {
        let expected = hmac_bytes(HmacAlgorithm::Sha1, token, &[req.url.as_bytes()]);
        let claimed = hex::decode(claimed.trim()).unwrap_or_default();
        let actual = Sha256::digest(&req.body);
        return accept(ct_eq(&expected, &presented) & ct_eq(&actual, &claimed));
    }
    let mut fields: Vec<(String, String)> = if req.is_form() {
        serde_urlencoded::from_bytes(&req.body)
            .map_err(|_| malformed("the form body cannot be read"))?
    } else if req.body.is_empty() {
        Vec::new()
    } else {
        // Without bodySHA256 the signature covers none of this body.
        return Err(Rejection::BadSignature);
    };
    fields.sort();
    let mut content = Vec::with_capacity(req.url.len() + req.body.len());
    content.extend_from_slice(req.url.as_bytes());
    for (name, value) in &fields {
        content.extend_from_slice(name.as_bytes());
        content.extend_from_slice(value.as_bytes());
    }
    let expected = hmac_bytes(HmacAlgorithm::Sha1, token, &[&content]);
    accept(ct_eq(&expected, &presented))
}

/// `Stripe-Signature: t=…,v1=…[,v1=…][,v0=…]` over `{t}.{body}`.
fn stripe(key: &[u8], tolerance: u64, req: &Inbound) -> Result<(), Rejection> {
    let header = required(req, "Stripe-Signature")?;
    let mut timestamps = Vec::new();
    let mut candidates = Vec::new();
    for item in header.split(',') {
        match item.trim().split_once('=') {
            Some(("t", t)) => timestamps.push(t),
            Some(("v1", sig)) => candidates.push(sig),
            _ => {} // v0 and schemes not known yet are not ours to check.
        }
    }
    let timestamp = match timestamps[..] {
        [t] => t,
        [] => return Err(malformed("no t= timestamp")),
        _ => return Err(malformed("more than one t= timestamp")),
    };
    if candidates.is_empty() {
        return Err(malformed("no v1 signature"));
    }
    check_window(unix_seconds(timestamp)?, req.now, tolerance)?;
    let expected = hmac_bytes(
        HmacAlgorithm::Sha256,
        key,
        &[timestamp.as_bytes(), b".", &req.body],
    );
    accept(any_match(
        &expected,
        candidates
            .iter()
            .map(|c| hex::decode(c).unwrap_or_default()),
    ))
}

/// `X-Slack-Signature: v0=<hex>` over `v0:{timestamp}:{body}`.
fn slack(key: &[u8], tolerance: u64, req: &Inbound) -> Result<(), Rejection> {
    let timestamp = required(req, "X-Slack-Request-Timestamp")?;
    let presented = presented(req, "X-Slack-Signature", "v0=", Encoding::Hex)?;
    check_window(unix_seconds(timestamp)?, req.now, tolerance)?;
    let expected = hmac_bytes(
        HmacAlgorithm::Sha256,
        key,
        &[b"v0:", timestamp.as_bytes(), b":", &req.body],
    );
    accept(ct_eq(&expected, &presented))
}

/// Standard Webhooks: `webhook-signature` lists `v1,<base64>` entries over
/// `{id}.{timestamp}.{body}`, keyed with the secret's `whsec_` base64.
fn standard_webhooks(secret: &str, tolerance: u64, req: &Inbound) -> Result<(), Rejection> {
    let id = required(req, "webhook-id")?;
    let timestamp = required(req, "webhook-timestamp")?;
    let header = required(req, "webhook-signature")?;
    let candidates: Vec<&str> = header
        .split_ascii_whitespace()
        .filter_map(|entry| match entry.split_once(',') {
            Some(("v1", sig)) => Some(sig),
            _ => None, // Other versions (e.g. v1a, asymmetric) are not ours to check.
        })
        .collect();
    if candidates.is_empty() {
        return Err(malformed("no v1 signature"));
    }
    check_window(unix_seconds(timestamp)?, req.now, tolerance)?;
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = BASE64
        .decode(encoded)
        .unwrap_or_else(|_| encoded.as_bytes().to_vec());
    if key.is_empty() {
        return Err(Rejection::NoSecret);
    }
    let expected = hmac_bytes(
        HmacAlgorithm::Sha256,
        &key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", &req.body],
    );
    accept(any_match(
        &expected,
        candidates
            .iter()
            .map(|c| BASE64.decode(c).unwrap_or_default()),
    ))
}

/// The tenant-described HMAC scheme.
fn generic(scheme: &HmacScheme, key: &[u8], req: &Inbound) -> Result<(), Rejection> {
    let presented = presented(req, &scheme.header, &scheme.prefix, scheme.encoding)?;
    let timestamp = match &scheme.timestamp_header {
        Some(name) => {
            let value = required(req, name)?;
            let seconds = any_time(value, scheme.timestamp_in_millis)?;
            check_window(seconds, req.now, scheme.tolerance_secs)?;
            Some(value)
        }
        None => None,
    };
    let id = match &scheme.id_header {
        Some(name) => Some(required(req, name)?),
        None => None,
    };
    let content = render(&scheme.content, req, timestamp, id)?;
    let expected = hmac_bytes(scheme.algorithm, key, &content);
    accept(ct_eq(&expected, &presented))
}

/// The parts of a content template, placeholders replaced in one pass so
/// that a body containing `{timestamp}` stays the body.
fn render<'a>(
    template: &'a str,
    req: &'a Inbound,
    timestamp: Option<&'a str>,
    id: Option<&'a str>,
) -> Result<Vec<&'a [u8]>, Rejection> {
    const PLACEHOLDERS: [&str; 5] = ["{body}", "{timestamp}", "{id}", "{method}", "{url}"];
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        parts.push(&rest.as_bytes()[..open]);
        let at = &rest[open..];
        let Some(name) = PLACEHOLDERS.iter().find(|p| at.starts_with(**p)) else {
            parts.push(b"{");
            rest = &at[1..];
            continue;
        };
        parts.push(match *name {
            "{body}" => &req.body,
            "{timestamp}" => timestamp
                .ok_or_else(|| {
                    malformed("content uses {timestamp} but no timestamp_header is set")
                })?
                .as_bytes(),
            "{id}" => id
                .ok_or_else(|| malformed("content uses {id} but no id_header is set"))?
                .as_bytes(),
            "{method}" => req.method.as_bytes(),
            _ => req.url.as_bytes(),
        });
        rest = &at[name.len()..];
    }
    parts.push(rest.as_bytes());
    Ok(parts)
}

/// SendGrid: base64 DER ECDSA P-256/SHA-256 over `{timestamp}{body}`,
/// checked with the verification key (base64 DER SubjectPublicKeyInfo).
fn sendgrid(secret: &str, tolerance: u64, req: &Inbound) -> Result<(), Rejection> {
    let timestamp = required(req, "X-Twilio-Email-Event-Webhook-Timestamp")?;
    let der = presented(
        req,
        "X-Twilio-Email-Event-Webhook-Signature",
        "",
        Encoding::Base64,
    )?;
    let signature =
        Signature::from_der(&der).map_err(|_| malformed("not a DER ECDSA signature"))?;
    check_window(unix_seconds(timestamp)?, req.now, tolerance)?;
    let key = sendgrid_key(secret).ok_or(Rejection::BadSignature)?;
    let mut message = Vec::with_capacity(timestamp.len() + req.body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(&req.body);
    key.verify(&message, &signature)
        .map_err(|_| Rejection::BadSignature)
}

/// The verification key as SendGrid shows it (base64 DER), PEM armour and
/// line breaks tolerated.
fn sendgrid_key(secret: &str) -> Option<VerifyingKey> {
    let encoded: String = secret
        .lines()
        .filter(|line| !line.trim_start().starts_with("-----"))
        .flat_map(str::chars)
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = BASE64.decode(encoded).ok()?;
    VerifyingKey::from_public_key_der(&der).ok()
}

fn required<'a>(req: &'a Inbound, name: &str) -> Result<&'a str, Rejection> {
    req.header(name)
        .ok_or_else(|| Rejection::MissingHeader(name.to_owned()))
}

/// The signature in header `name`, `prefix` stripped, decoded.
fn presented(
    req: &Inbound,
    name: &str,
    prefix: &str,
    encoding: Encoding,
) -> Result<Vec<u8>, Rejection> {
    let value = required(req, name)?.trim();
    let encoded = value
        .strip_prefix(prefix)
        .ok_or_else(|| malformed(&format!("the signature does not start with {prefix}")))?;
    match encoding {
        Encoding::Hex => hex::decode(encoded).map_err(|_| malformed("the signature is not hex")),
        Encoding::Base64 => BASE64
            .decode(encoded)
            .map_err(|_| malformed("the signature is not base64")),
    }
}

fn malformed(why: &str) -> Rejection {
    Rejection::Malformed(why.to_owned())
}

/// Whole seconds since the epoch, digits only.
fn unix_seconds(value: &str) -> Result<i64, Rejection> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("the timestamp is not a number of seconds"));
    }
    value
        .parse()
        .map_err(|_| malformed("the timestamp is out of range"))
}

/// A generic scheme's timestamp: an integer (seconds, or milliseconds when
/// the scheme says so) or an RFC 3339 time; in seconds.
fn any_time(value: &str, millis: bool) -> Result<i64, Rejection> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let n = unix_seconds(value)?;
        return Ok(if millis { n / 1000 } else { n });
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp())
        .map_err(|_| malformed("the timestamp is neither a number nor an RFC 3339 time"))
}

fn check_window(ts: i64, now: i64, tol: u64) -> Result<(), Rejection> {
    let age = i128::from(now) - i128::from(ts);
    if age > i128::from(tol) {
        Err(Rejection::StaleTimestamp(tol))
    } else if -age > i128::from(tol) {
        Err(Rejection::FutureTimestamp)
    } else {
        Ok(())
    }
}

fn hmac_bytes(alg: HmacAlgorithm, key: &[u8], msg: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[&[u8]]) -> Vec<u8> {
        let mut mac = <M as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
        for part in msg {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match alg {
        HmacAlgorithm::Sha1 => run::<Hmac<Sha1>>(key, msg),
        HmacAlgorithm::Sha256 => run::<Hmac<Sha256>>(key, msg),
        HmacAlgorithm::Sha512 => run::<Hmac<Sha512>>(key, msg),
    }
}

/// Constant-time equality; a length mismatch (public: the MAC length is
/// fixed) or an empty expectation never matches.
fn ct_eq(expected: &[u8], presented: &[u8]) -> Choice {
    if expected.is_empty() || expected.len() != presented.len() {
        return Choice::from(0);
    }
    expected.ct_eq(presented)
}

/// Whether any candidate matches, looking at every one of them.
fn any_match(expected: &[u8], candidates: impl Iterator<Item = Vec<u8>>) -> Choice {
    candidates.fold(Choice::from(0), |found, c| found | ct_eq(expected, &c))
}

fn accept(matched: Choice) -> Result<(), Rejection> {
    if bool::from(matched) {
        Ok(())
    } else {
        Err(Rejection::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePublicKey as _;
    use serde_json::Value;

    /// Published examples; CI has `shared/` beside the repository too.
    const VECTORS: &str = include_str!("../../../../shared/vectors/webhook-signatures.json");
    const URL: &str = "https://latchkey.example/hooks/cred_01HZX";
    const NOW: i64 = 1_700_000_000;
    const SECRET: &str = "tenant-webhook-secret-9f2c";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"thing.happened"}"#;

    fn request(headers: &[(&str, &str)], body: &[u8]) -> Inbound {
        Inbound {
            method: "POST".into(),
            url: URL.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
                .collect(),
            body: body.to_vec(),
            now: NOW,
        }
    }

    fn with_header(req: &Inbound, name: &str, value: &str) -> Inbound {
        let mut req = req.clone();
        for (k, v) in &mut req.headers {
            if k.eq_ignore_ascii_case(name) {
                *v = value.to_owned();
            }
        }
        req
    }

    fn without_header(req: &Inbound, name: &str) -> Inbound {
        let mut req = req.clone();
        req.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        req
    }

    fn with_body(req: &Inbound, body: &[u8]) -> Inbound {
        Inbound {
            body: body.to_vec(),
            ..req.clone()
        }
    }

    fn at(req: &Inbound, now: i64) -> Inbound {
        Inbound { now, ..req.clone() }
    }

    fn check(spec: &ServiceSpec, secret: &str, req: &Inbound) -> Result<(), Rejection> {
        verify(spec, Some(&SecretString::from(secret.to_owned())), req)
    }

    /// The delivery is refused, and the reason shows neither the secret nor
    /// any header value (signatures included).
    fn refused(spec: &ServiceSpec, secret: &str, req: &Inbound) -> Rejection {
        let err = check(spec, secret, req).expect_err("the delivery must be refused");
        let text = err.to_string();
        assert!(!text.contains(secret), "{text:?} shows the secret");
        for (name, value) in &req.headers {
            assert!(
                value.len() < 8 || !text.contains(value.as_str()),
                "{text:?} shows the {name} header"
            );
        }
        err
    }

    fn flip(s: &str, i: usize) -> String {
        let mut bytes = s.as_bytes().to_vec();
        bytes[i] ^= 0x01;
        String::from_utf8(bytes).expect("ASCII stays ASCII")
    }

    fn mac1(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha1>::new_from_slice(key).unwrap();
        mac.update(msg);
        mac.finalize().into_bytes().to_vec()
    }

    fn mac256(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(msg);
        mac.finalize().into_bytes().to_vec()
    }

    fn mac512(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha512>::new_from_slice(key).unwrap();
        mac.update(msg);
        mac.finalize().into_bytes().to_vec()
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn sign_github(secret: &str, body: &[u8]) -> String {
        format!("sha256={}", hex::encode(mac256(secret.as_bytes(), body)))
    }

    fn sign_stripe(secret: &str, t: i64, body: &[u8]) -> String {
        let t = t.to_string();
        hex::encode(mac256(secret.as_bytes(), &cat(&[t.as_bytes(), b".", body])))
    }

    fn sign_slack(secret: &str, ts: &str, body: &[u8]) -> String {
        let content = cat(&[b"v0:", ts.as_bytes(), b":", body]);
        format!("v0={}", hex::encode(mac256(secret.as_bytes(), &content)))
    }

    fn sign_shopify(secret: &str, body: &[u8]) -> String {
        BASE64.encode(mac256(secret.as_bytes(), body))
    }

    fn sign_twilio(token: &str, signed: &str) -> String {
        BASE64.encode(mac1(token.as_bytes(), signed.as_bytes()))
    }

    fn sign_standard(key: &[u8], id: &str, ts: &str, body: &[u8]) -> String {
        let content = cat(&[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
        format!("v1,{}", BASE64.encode(mac256(key, &content)))
    }

    fn sign_sendgrid(key: &SigningKey, ts: &str, body: &[u8]) -> String {
        let signature: Signature = key.sign(&cat(&[ts.as_bytes(), body]));
        BASE64.encode(signature.to_der().as_bytes())
    }

    fn sendgrid_public(key: &SigningKey) -> String {
        let der = key.verifying_key().to_public_key_der().unwrap();
        BASE64.encode(der.as_bytes())
    }

    /// A published example, ready to verify, and what in it is signed.
    struct Published {
        name: &'static str,
        spec: ServiceSpec,
        secret: String,
        req: Inbound,
        signature_header: &'static str,
        /// Other signed headers whose every byte counts.
        signed_headers: &'static [&'static str],
        url_is_signed: bool,
    }

    fn published() -> Vec<Published> {
        let v: Value = serde_json::from_str(VECTORS).unwrap();
        let text = |x: &Value| x.as_str().unwrap().to_owned();

        let g = &v["github"];
        let github = Published {
            name: "github",
            spec: ServiceSpec::GithubSignature,
            secret: text(&g["secret"]),
            req: request(
                &[(
                    g["header"].as_str().unwrap(),
                    g["signature"].as_str().unwrap(),
                )],
                g["body"].as_str().unwrap().as_bytes(),
            ),
            signature_header: "X-Hub-Signature-256",
            signed_headers: &[],
            url_is_signed: false,
        };

        let t = &v["twilio"];
        let fields: Vec<(String, String)> = t["form_params"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), text(v)))
            .collect();
        let mut twilio_req = request(
            &[
                (
                    t["header"].as_str().unwrap(),
                    t["signature"].as_str().unwrap(),
                ),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            serde_urlencoded::to_string(&fields).unwrap().as_bytes(),
        );
        twilio_req.url = text(&t["url"]);
        let twilio = Published {
            name: "twilio",
            spec: ServiceSpec::TwilioSignature,
            secret: text(&t["auth_token"]),
            req: twilio_req,
            signature_header: "X-Twilio-Signature",
            signed_headers: &[],
            url_is_signed: true,
        };

        let s = &v["standard_webhooks"];
        let own_time: i64 = s["webhook-timestamp"].as_str().unwrap().parse().unwrap();
        let standard = Published {
            name: "standard_webhooks",
            spec: ServiceSpec::StandardWebhooksSignature {
                tolerance_secs: 300,
            },
            secret: text(&s["secret"]),
            req: at(
                &request(
                    &[
                        ("webhook-id", s["webhook-id"].as_str().unwrap()),
                        (
                            "webhook-timestamp",
                            s["webhook-timestamp"].as_str().unwrap(),
                        ),
                        (
                            "webhook-signature",
                            s["webhook-signature"].as_str().unwrap(),
                        ),
                    ],
                    s["body"].as_str().unwrap().as_bytes(),
                ),
                own_time,
            ),
            signature_header: "webhook-signature",
            signed_headers: &["webhook-id", "webhook-timestamp"],
            url_is_signed: false,
        };
        vec![github, twilio, standard]
    }

    #[test]
    fn every_published_example_verifies() {
        let examples = published();
        assert_eq!(examples.len(), 3);
        for p in &examples {
            assert_eq!(check(&p.spec, &p.secret, &p.req), Ok(()), "{}", p.name);
        }
    }

    #[test]
    fn the_standard_webhooks_example_is_stale_today() {
        let p = published().pop().unwrap();
        assert_eq!(p.name, "standard_webhooks");
        let today = at(&p.req, chrono::Utc::now().timestamp());
        assert_eq!(
            refused(&p.spec, &p.secret, &today),
            Rejection::StaleTimestamp(300)
        );
    }

    #[test]
    fn flipping_any_byte_of_a_published_example_fails() {
        for p in published() {
            let name = p.name;
            for i in 0..p.req.body.len() {
                let mut req = p.req.clone();
                req.body[i] ^= 0x01;
                let err = refused(&p.spec, &p.secret, &req);
                assert_eq!(err, Rejection::BadSignature, "{name}: body byte {i}");
            }
            for i in 0..p.secret.len() {
                let err = refused(&p.spec, &flip(&p.secret, i), &p.req);
                assert_eq!(err, Rejection::BadSignature, "{name}: secret byte {i}");
            }
            let signature = p.req.header(p.signature_header).unwrap().to_owned();
            for i in 0..signature.len() {
                let req = with_header(&p.req, p.signature_header, &flip(&signature, i));
                let err = refused(&p.spec, &p.secret, &req);
                assert!(
                    matches!(err, Rejection::BadSignature | Rejection::Malformed(_)),
                    "{name}: signature byte {i}: {err:?}"
                );
            }
            for header in p.signed_headers {
                let value = p.req.header(header).unwrap().to_owned();
                for i in 0..value.len() {
                    let req = with_header(&p.req, header, &flip(&value, i));
                    let err = refused(&p.spec, &p.secret, &req);
                    assert!(
                        matches!(
                            err,
                            Rejection::BadSignature
                                | Rejection::StaleTimestamp(_)
                                | Rejection::FutureTimestamp
                        ),
                        "{name}: {header} byte {i}: {err:?}"
                    );
                }
            }
            if p.url_is_signed {
                for i in 0..p.req.url.len() {
                    let req = Inbound {
                        url: flip(&p.req.url, i),
                        ..p.req.clone()
                    };
                    let err = refused(&p.spec, &p.secret, &req);
                    assert_eq!(err, Rejection::BadSignature, "{name}: url byte {i}");
                }
            }
        }
    }

    #[test]
    fn github_passes_its_own_signature_only() {
        let spec = ServiceSpec::GithubSignature;
        let req = request(&[("x-hub-signature-256", &sign_github(SECRET, BODY))], BODY);
        assert_eq!(check(&spec, SECRET, &req), Ok(()));
        let upper = format!(
            "sha256={}",
            hex::encode_upper(mac256(SECRET.as_bytes(), BODY))
        );
        let req_upper = with_header(&req, "x-hub-signature-256", &upper);
        assert_eq!(check(&spec, SECRET, &req_upper), Ok(()));

        let tampered = with_body(&req, br#"{"id":"evt_1","type":"thing.happenee"}"#);
        assert_eq!(refused(&spec, SECRET, &tampered), Rejection::BadSignature);
        assert_eq!(
            refused(&spec, "another-secret", &req),
            Rejection::BadSignature
        );
    }

    #[test]
    fn github_refuses_missing_empty_and_unprefixed_signatures() {
        let spec = ServiceSpec::GithubSignature;
        let req = request(&[("x-hub-signature-256", &sign_github(SECRET, BODY))], BODY);
        assert_eq!(
            refused(&spec, SECRET, &without_header(&req, "x-hub-signature-256")),
            Rejection::MissingHeader("X-Hub-Signature-256".into())
        );
        let empty = with_header(&req, "x-hub-signature-256", "sha256=");
        assert_eq!(refused(&spec, SECRET, &empty), Rejection::BadSignature);
        let bare = hex::encode(mac256(SECRET.as_bytes(), BODY));
        let unprefixed = with_header(&req, "x-hub-signature-256", &bare);
        assert!(matches!(
            refused(&spec, SECRET, &unprefixed),
            Rejection::Malformed(_)
        ));
        let short = with_header(
            &req,
            "x-hub-signature-256",
            &format!("sha256={}", &bare[..40]),
        );
        assert_eq!(refused(&spec, SECRET, &short), Rejection::BadSignature);
        let not_hex = with_header(&req, "x-hub-signature-256", "sha256=zz");
        assert!(matches!(
            refused(&spec, SECRET, &not_hex),
            Rejection::Malformed(_)
        ));
    }

    fn twilio_form(token: &str, fields: &str, signed_fields: &str) -> Inbound {
        let signed = format!("{URL}{signed_fields}");
        request(
            &[
                ("x-twilio-signature", &sign_twilio(token, &signed)),
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
            ],
            fields.as_bytes(),
        )
    }

    #[test]
    fn twilio_form_post_signs_the_url_and_the_sorted_fields() {
        let spec = ServiceSpec::TwilioSignature;
        let req = twilio_form(
            SECRET,
            "To=%2B18005551212&From=%2B12349013030&Body=hi+there",
            "Bodyhi thereFrom+12349013030To+18005551212",
        );
        assert_eq!(check(&spec, SECRET, &req), Ok(()));
        // Repeated names are sorted by value.
        let repeated = twilio_form(SECRET, "b=2&a=z&a=y", "ayazb2");
        assert_eq!(check(&spec, SECRET, &repeated), Ok(()));

        let tampered = with_body(&req, b"To=%2B18005551212&From=%2B12349013031&Body=hi+there");
        assert_eq!(refused(&spec, SECRET, &tampered), Rejection::BadSignature);
        let added = with_body(
            &req,
            b"To=%2B18005551212&From=%2B12349013030&Body=hi+there&x=1",
        );
        assert_eq!(refused(&spec, SECRET, &added), Rejection::BadSignature);
        assert_eq!(
            refused(&spec, "another-token", &req),
            Rejection::BadSignature
        );
    }

    #[test]
    fn twilio_refuses_missing_empty_and_unsigned_bodies() {
        let spec = ServiceSpec::TwilioSignature;
        let req = twilio_form(SECRET, "a=1", "a1");
        assert_eq!(
            refused(&spec, SECRET, &without_header(&req, "x-twilio-signature")),
            Rejection::MissingHeader("X-Twilio-Signature".into())
        );
        let empty = with_header(&req, "x-twilio-signature", "");
        assert_eq!(refused(&spec, SECRET, &empty), Rejection::BadSignature);
        // A URL-only signature never vouches for a body it did not cover.
        let url_only = request(&[("x-twilio-signature", &sign_twilio(SECRET, URL))], b"");
        assert_eq!(check(&spec, SECRET, &url_only), Ok(()));
        let json = with_body(&url_only, BODY);
        assert_eq!(refused(&spec, SECRET, &json), Rejection::BadSignature);
    }

    #[test]
    fn twilio_json_body_is_covered_by_body_sha256() {
        let spec = ServiceSpec::TwilioSignature;
        let url = format!("{URL}?bodySHA256={}", hex::encode(Sha256::digest(BODY)));
        let mut req = request(
            &[
                ("x-twilio-signature", &sign_twilio(SECRET, &url)),
                ("content-type", "application/json"),
            ],
            BODY,
        );
        req.url = url;
        assert_eq!(check(&spec, SECRET, &req), Ok(()));

        let tampered = with_body(&req, br#"{"id":"evt_2","type":"thing.happened"}"#);
        assert_eq!(refused(&spec, SECRET, &tampered), Rejection::BadSignature);
        assert_eq!(
            refused(&spec, "another-token", &req),
            Rejection::BadSignature
        );

        // A correctly signed URL whose hash is not the body's.
        let other = format!("{URL}?bodySHA256={}", hex::encode(Sha256::digest(b"{}")));
        let mut mismatch = with_header(&req, "x-twilio-signature", &sign_twilio(SECRET, &other));
        mismatch.url = other;
        assert_eq!(refused(&spec, SECRET, &mismatch), Rejection::BadSignature);
    }

    fn stripe_request(header: &str) -> Inbound {
        request(&[("stripe-signature", header)], BODY)
    }

    #[test]
    fn stripe_passes_any_matching_v1() {
        let spec = ServiceSpec::StripeSignature {
            tolerance_secs: 300,
        };
        let good = sign_stripe(SECRET, NOW, BODY);
        let bad = sign_stripe("another-secret", NOW, BODY);
        for header in [
            format!("t={NOW},v1={good}"),
            format!("t={NOW},v1={bad},v1={good}"),
            format!("t={NOW},v1={good},v1={bad}"),
            format!("t={NOW},v1={good},v0={bad},v9=x"),
        ] {
            assert_eq!(
                check(&spec, SECRET, &stripe_request(&header)),
                Ok(()),
                "{header}"
            );
        }
        let req = stripe_request(&format!("t={NOW},v1={good}"));
        let tampered = with_body(&req, b"{}");
        assert_eq!(refused(&spec, SECRET, &tampered), Rejection::BadSignature);
        assert_eq!(
            refused(&spec, "another-secret", &req),
            Rejection::BadSignature
        );
        let only_bad = stripe_request(&format!("t={NOW},v1={bad},v1=zz"));
        assert_eq!(refused(&spec, SECRET, &only_bad), Rejection::BadSignature);
        // The timestamp is signed: moving it breaks the signature.
        let moved = stripe_request(&format!("t={},v1={good}", NOW - 1));
        assert_eq!(refused(&spec, SECRET, &moved), Rejection::BadSignature);
    }

    #[test]
    fn stripe_refuses_malformed_empty_and_missing_signatures() {
        let spec = ServiceSpec::StripeSignature {
            tolerance_secs: 300,
        };
        let good = sign_stripe(SECRET, NOW, BODY);
        assert_eq!(
            refused(&spec, SECRET, &request(&[], BODY)),
            Rejection::MissingHeader("Stripe-Signature".into())
        );
        let v0_only = stripe_request(&format!("t={NOW},v0={good}"));
        assert!(matches!(
            refused(&spec, SECRET, &v0_only),
            Rejection::Malformed(_)
        ));
        let empty = stripe_request(&format!("t={NOW},v1="));
        assert_eq!(refused(&spec, SECRET, &empty), Rejection::BadSignature);
        for header in [
            format!("v1={good}"),
            format!("t=soon,v1={good}"),
            format!("t=-{NOW},v1={good}"),
            format!("t={NOW},t={NOW},v1={good}"),
            String::new(),
        ] {
            let err = refused(&spec, SECRET, &stripe_request(&header));
            assert!(matches!(err, Rejection::Malformed(_)), "{header}: {err:?}");
        }
    }

    #[test]
    fn stripe_enforces_its_window_both_ways() {
        let spec = ServiceSpec::StripeSignature {
            tolerance_secs: 300,
        };
        let signed_at =
            |t: i64| stripe_request(&format!("t={t},v1={}", sign_stripe(SECRET, t, BODY)));
        assert_eq!(check(&spec, SECRET, &signed_at(NOW - 300)), Ok(()));
        assert_eq!(check(&spec, SECRET, &signed_at(NOW + 300)), Ok(()));
        assert_eq!(
            refused(&spec, SECRET, &signed_at(NOW - 301)),
            Rejection::StaleTimestamp(300)
        );
        assert_eq!(
            refused(&spec, SECRET, &signed_at(NOW + 301)),
            Rejection::FutureTimestamp
        );
        let wide = ServiceSpec::StripeSignature {
            tolerance_secs: 600,
        };
        assert_eq!(check(&wide, SECRET, &signed_at(NOW - 500)), Ok(()));
    }

    fn slack_request(ts: i64, body: &[u8]) -> Inbound {
        let ts = ts.to_string();
        request(
            &[
                ("x-slack-request-timestamp", &ts),
                ("x-slack-signature", &sign_slack(SECRET, &ts, body)),
            ],
            body,
        )
    }

    #[test]
    fn slack_passes_its_own_signature_within_the_window() {
        let spec = ServiceSpec::SlackSignature {
            tolerance_secs: 300,
        };
        let req = slack_request(NOW - 10, BODY);
        assert_eq!(check(&spec, SECRET, &req), Ok(()));
        assert_eq!(
            refused(&spec, SECRET, &with_body(&req, b"{}")),
            Rejection::BadSignature
        );
        assert_eq!(
            refused(&spec, "another-secret", &req),
            Rejection::BadSignature
        );
        let moved = with_header(&req, "x-slack-request-timestamp", &(NOW - 11).to_string());
        assert_eq!(refused(&spec, SECRET, &moved), Rejection::BadSignature);
        assert_eq!(
            refused(&spec, SECRET, &slack_request(NOW - 301, BODY)),
            Rejection::StaleTimestamp(300)
        );
        assert_eq!(
            refused(&spec, SECRET, &slack_request(NOW + 301, BODY)),
            Rejection::FutureTimestamp
        );
    }

    #[test]
    fn slack_refuses_missing_empty_and_unprefixed_signatures() {
        let spec = ServiceSpec::SlackSignature {
            tolerance_secs: 300,
        };
        let req = slack_request(NOW, BODY);
        assert_eq!(
            refused(&spec, SECRET, &without_header(&req, "x-slack-signature")),
            Rejection::MissingHeader("X-Slack-Signature".into())
        );
        assert_eq!(
            refused(
                &spec,
                SECRET,
                &without_header(&req, "x-slack-request-timestamp")
            ),
            Rejection::MissingHeader("X-Slack-Request-Timestamp".into())
        );
        let empty = with_header(&req, "x-slack-signature", "v0=");
        assert_eq!(refused(&spec, SECRET, &empty), Rejection::BadSignature);
        let signature = req.header("x-slack-signature").unwrap().to_owned();
        let unprefixed = with_header(&req, "x-slack-signature", &signature[3..]);
        assert!(matches!(
            refused(&spec, SECRET, &unprefixed),
            Rejection::Malformed(_)
        ));
        let not_a_time = with_header(&req, "x-slack-request-timestamp", "yesterday");
        assert!(matches!(
            refused(&spec, SECRET, &not_a_time),
            Rejection::Malformed(_)
        ));
    }

    #[test]
    fn shopify_passes_its_own_signature_only() {
        let spec = ServiceSpec::ShopifySignature;
        let req = request(
            &[("x-shopify-hmac-sha256", &sign_shopify(SECRET, BODY))],
            BODY,
        );
        assert_eq!(check(&spec, SECRET, &req), Ok(()));
        assert_eq!(
            refused(&spec, SECRET, &with_body(&req, b"{}")),
            Rejection::BadSignature
        );
        assert_eq!(
            refused(&spec, "another-secret", &req),
            Rejection::BadSignature
        );
        assert_eq!(
            refused(&spec, SECRET, &request(&[], BODY)),
            Rejection::MissingHeader("X-Shopify-Hmac-Sha256".into())
        );
        let empty = with_header(&req, "x-shopify-hmac-sha256", "");
        assert_eq!(refused(&spec, SECRET, &empty), Rejection::BadSignature);
        let not_base64 = with_header(&req, "x-shopify-hmac-sha256", "not base64!");
        assert!(matches!(
            refused(&spec, SECRET, &not_base64),
            Rejection::Malformed(_)
        ));
    }

    const STANDARD_KEY: [u8; 24] = *b"standard-webhooks-key-24";

    fn standard_request(secret_key: &[u8], ts: i64, signature: Option<&str>) -> Inbound {
        let ts = ts.to_string();
        let id = "msg_2bD9qY";
        let signed = sign_standard(secret_key, id, &ts, BODY);
        request(
            &[
                ("webhook-id", id),
                ("webhook-timestamp", &ts),
                ("webhook-signature", signature.unwrap_or(&signed)),
            ],
            BODY,
        )
    }

    #[test]
    fn standard_webhooks_passes_any_v1_with_the_whsec_key() {
        let spec = ServiceSpec::StandardWebhooksSignature {
            tolerance_secs: 300,
        };
        let secret = format!("whsec_{}", BASE64.encode(STANDARD_KEY));
        let req = standard_request(&STANDARD_KEY, NOW, None);
        assert_eq!(check(&spec, &secret, &req), Ok(()));
        let good = req.header("webhook-signature").unwrap().to_owned();
        let bad = sign_standard(b"another key", "msg_2bD9qY", &NOW.to_string(), BODY);
        for several in [
            format!("{bad} v1a,c2lnbmVk {good}"),
            format!("{good} {bad} v1a,c2lnbmVk"),
        ] {
            let req = with_header(&req, "webhook-signature", &several);
            assert_eq!(check(&spec, &secret, &req), Ok(()), "{several}");
        }

        // Without the prefix: base64 when it is base64, the raw bytes otherwise.
        assert_eq!(check(&spec, &BASE64.encode(STANDARD_KEY), &req), Ok(()));
        let raw = "not base64: a raw key!";
        let raw_req = standard_request(raw.as_bytes(), NOW, None);
        assert_eq!(check(&spec, raw, &raw_req), Ok(()));

        assert_eq!(
            refused(&spec, &secret, &with_body(&req, b"{}")),
            Rejection::BadSignature
        );
        let other = format!("whsec_{}", BASE64.encode(b"another key"));
        assert_eq!(refused(&spec, &other, &req), Rejection::BadSignature);
        let moved_id = with_header(&req, "webhook-id", "msg_other");
        assert_eq!(refused(&spec, &secret, &moved_id), Rejection::BadSignature);
    }

    #[test]
    fn standard_webhooks_refuses_missing_empty_other_versions_and_old_times() {
        let spec = ServiceSpec::StandardWebhooksSignature {
            tolerance_secs: 300,
        };
        let secret = format!("whsec_{}", BASE64.encode(STANDARD_KEY));
        let req = standard_request(&STANDARD_KEY, NOW, None);
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            assert_eq!(
                refused(&spec, &secret, &without_header(&req, name)),
                Rejection::MissingHeader(name.into())
            );
        }
        let empty = with_header(&req, "webhook-signature", "v1,");
        assert_eq!(refused(&spec, &secret, &empty), Rejection::BadSignature);
        let good = req.header("webhook-signature").unwrap().to_owned();
        let v2 = with_header(&req, "webhook-signature", &good.replacen("v1,", "v2,", 1));
        assert!(matches!(
            refused(&spec, &secret, &v2),
            Rejection::Malformed(_)
        ));
        assert_eq!(
            refused(
                &spec,
                &secret,
                &standard_request(&STANDARD_KEY, NOW - 301, None)
            ),
            Rejection::StaleTimestamp(300)
        );
        assert_eq!(
            refused(
                &spec,
                &secret,
                &standard_request(&STANDARD_KEY, NOW + 301, None)
            ),
            Rejection::FutureTimestamp
        );
        assert_eq!(refused(&spec, "whsec_", &req), Rejection::NoSecret);
    }

    fn acme_scheme() -> HmacScheme {
        HmacScheme {
            algorithm: HmacAlgorithm::Sha256,
            header: "X-Acme-Signature".into(),
            encoding: Encoding::Hex,
            prefix: "sha256=".into(),
            content: "{timestamp}.{body}".into(),
            timestamp_header: Some("X-Acme-Timestamp".into()),
            id_header: None,
            tolerance_secs: 300,
            timestamp_in_millis: false,
        }
    }

    fn acme_request(ts: &str, body: &[u8]) -> Inbound {
        let mac = mac256(SECRET.as_bytes(), &cat(&[ts.as_bytes(), b".", body]));
        request(
            &[
                ("x-acme-timestamp", ts),
                ("x-acme-signature", &format!("sha256={}", hex::encode(mac))),
            ],
            body,
        )
    }

    #[test]
    fn generic_hmac_with_prefix_and_timestamp_template() {
        let spec = ServiceSpec::HmacSignature(acme_scheme());
        let req = acme_request(&NOW.to_string(), BODY);
        assert_eq!(check(&spec, SECRET, &req), Ok(()));
        let upper = req.header("x-acme-signature").unwrap().to_ascii_uppercase();
        let upper = with_header(
            &req,
            "x-acme-signature",
            &upper.replacen("SHA256=", "sha256=", 1),
        );
        assert_eq!(check(&spec, SECRET, &upper), Ok(()));
        // Placeholders are replaced in the template only, never in the body.
        let literal = br#"{"note":"{timestamp} and {body}"}"#;
        assert_eq!(
            check(&spec, SECRET, &acme_request(&NOW.to_string(), literal)),
            Ok(())
        );

        assert_eq!(
            refused(&spec, SECRET, &with_body(&req, b"{}")),
            Rejection::BadSignature
        );
        assert_eq!(
            refused(&spec, "another-secret", &req),
            Rejection::BadSignature
        );
        let signature = req.header("x-acme-signature").unwrap().to_owned();
        let unprefixed = with_header(&req, "x-acme-signature", &signature[7..]);
        assert!(matches!(
            refused(&spec, SECRET, &unprefixed),
            Rejection::Malformed(_)
        ));
        let empty = with_header(&req, "x-acme-signature", "sha256=");
        assert_eq!(refused(&spec, SECRET, &empty), Rejection::BadSignature);
        assert_eq!(
            refused(&spec, SECRET, &without_header(&req, "x-acme-signature")),
            Rejection::MissingHeader("X-Acme-Signature".into())
        );
        assert_eq!(
            refused(&spec, SECRET, &without_header(&req, "x-acme-timestamp")),
            Rejection::MissingHeader("X-Acme-Timestamp".into())
        );
        assert_eq!(
            refused(&spec, SECRET, &acme_request(&(NOW - 301).to_string(), BODY)),
            Rejection::StaleTimestamp(300)
        );
        assert_eq!(
            refused(&spec, SECRET, &acme_request(&(NOW + 301).to_string(), BODY)),
            Rejection::FutureTimestamp
        );
        let garbage = acme_request("last tuesday", BODY);
        assert!(matches!(
            refused(&spec, SECRET, &garbage),
            Rejection::Malformed(_)
        ));
    }

    #[test]
    fn generic_hmac_reads_millisecond_and_rfc3339_timestamps() {
        let millis = ServiceSpec::HmacSignature(HmacScheme {
            timestamp_in_millis: true,
            ..acme_scheme()
        });
        let now_ms = (NOW * 1000 + 999).to_string();
        assert_eq!(check(&millis, SECRET, &acme_request(&now_ms, BODY)), Ok(()));
        let old_ms = ((NOW - 301) * 1000).to_string();
        assert_eq!(
            refused(&millis, SECRET, &acme_request(&old_ms, BODY)),
            Rejection::StaleTimestamp(300)
        );
        // Read as seconds, a millisecond time is far in the future.
        let seconds = ServiceSpec::HmacSignature(acme_scheme());
        assert_eq!(
            refused(&seconds, SECRET, &acme_request(&now_ms, BODY)),
            Rejection::FutureTimestamp
        );
        let rfc3339 = "2023-11-14T22:13:20Z"; // NOW
        assert_eq!(
            check(&seconds, SECRET, &acme_request(rfc3339, BODY)),
            Ok(())
        );
        assert_eq!(check(&millis, SECRET, &acme_request(rfc3339, BODY)), Ok(()));
        assert_eq!(
            refused(
                &seconds,
                SECRET,
                &acme_request("2023-11-14T22:00:00Z", BODY)
            ),
            Rejection::StaleTimestamp(300)
        );
    }

    #[test]
    fn generic_hmac_sha1_base64_and_sha512_with_id_method_and_url() {
        let sha512 = HmacScheme {
            algorithm: HmacAlgorithm::Sha512,
            header: "X-Sig".into(),
            encoding: Encoding::Hex,
            prefix: String::new(),
            content: "{method} {url} {id} {other} {body}".into(),
            timestamp_header: None,
            id_header: Some("X-Delivery".into()),
            tolerance_secs: 300,
            timestamp_in_millis: false,
        };
        let signed = cat(&[b"POST ", URL.as_bytes(), b" d-42 {other} ", BODY]);
        let req = request(
            &[
                ("x-delivery", "d-42"),
                ("x-sig", &hex::encode(mac512(SECRET.as_bytes(), &signed))),
            ],
            BODY,
        );
        let spec = ServiceSpec::HmacSignature(sha512.clone());
        assert_eq!(check(&spec, SECRET, &req), Ok(()));
        let other_id = with_header(&req, "x-delivery", "d-43");
        assert_eq!(refused(&spec, SECRET, &other_id), Rejection::BadSignature);
        let get = Inbound {
            method: "GET".into(),
            ..req.clone()
        };
        assert_eq!(refused(&spec, SECRET, &get), Rejection::BadSignature);
        assert_eq!(
            refused(&spec, SECRET, &without_header(&req, "x-delivery")),
            Rejection::MissingHeader("X-Delivery".into())
        );
        let no_id_header = ServiceSpec::HmacSignature(HmacScheme {
            id_header: None,
            ..sha512
        });
        assert!(matches!(
            refused(&no_id_header, SECRET, &req),
            Rejection::Malformed(_)
        ));

        let sha1 = ServiceSpec::HmacSignature(HmacScheme {
            algorithm: HmacAlgorithm::Sha1,
            header: "X-Sig".into(),
            encoding: Encoding::Base64,
            prefix: String::new(),
            content: "{body}".into(),
            timestamp_header: None,
            id_header: None,
            tolerance_secs: 300,
            timestamp_in_millis: false,
        });
        let req = request(
            &[("x-sig", &BASE64.encode(mac1(SECRET.as_bytes(), BODY)))],
            BODY,
        );
        assert_eq!(check(&sha1, SECRET, &req), Ok(()));
        assert_eq!(
            refused(&sha1, SECRET, &with_body(&req, b"{}")),
            Rejection::BadSignature
        );
        assert_eq!(
            refused(&sha1, SECRET, &with_header(&req, "x-sig", "")),
            Rejection::BadSignature
        );
    }

    fn sendgrid_request(key: &SigningKey, ts: i64, body: &[u8]) -> Inbound {
        let ts = ts.to_string();
        request(
            &[
                ("x-twilio-email-event-webhook-timestamp", &ts),
                (
                    "x-twilio-email-event-webhook-signature",
                    &sign_sendgrid(key, &ts, body),
                ),
            ],
            body,
        )
    }

    #[test]
    fn sendgrid_checks_the_ecdsa_signature_with_the_verification_key() {
        let spec = ServiceSpec::SendgridSignature {
            tolerance_secs: 300,
        };
        let key = SigningKey::from_slice(&[0x2a; 32]).unwrap();
        let public = sendgrid_public(&key);
        let req = sendgrid_request(&key, NOW, BODY);
        assert_eq!(check(&spec, &public, &req), Ok(()));
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{public}\n-----END PUBLIC KEY-----\n");
        assert_eq!(check(&spec, &pem, &req), Ok(()));

        assert_eq!(
            refused(&spec, &public, &with_body(&req, b"{}")),
            Rejection::BadSignature
        );
        let moved = with_header(
            &req,
            "x-twilio-email-event-webhook-timestamp",
            &(NOW + 1).to_string(),
        );
        assert_eq!(refused(&spec, &public, &moved), Rejection::BadSignature);
        let other = sendgrid_public(&SigningKey::from_slice(&[0x2b; 32]).unwrap());
        assert_eq!(refused(&spec, &other, &req), Rejection::BadSignature);
        assert_eq!(refused(&spec, "not a key", &req), Rejection::BadSignature);
    }

    #[test]
    fn sendgrid_refuses_missing_empty_and_old_signatures() {
        let spec = ServiceSpec::SendgridSignature {
            tolerance_secs: 300,
        };
        let key = SigningKey::from_slice(&[0x2a; 32]).unwrap();
        let public = sendgrid_public(&key);
        let req = sendgrid_request(&key, NOW, BODY);
        for name in [
            "X-Twilio-Email-Event-Webhook-Signature",
            "X-Twilio-Email-Event-Webhook-Timestamp",
        ] {
            assert_eq!(
                refused(&spec, &public, &without_header(&req, name)),
                Rejection::MissingHeader(name.into())
            );
        }
        let empty = with_header(&req, "x-twilio-email-event-webhook-signature", "");
        assert!(matches!(
            refused(&spec, &public, &empty),
            Rejection::Malformed(_)
        ));
        assert_eq!(
            refused(&spec, &public, &sendgrid_request(&key, NOW - 301, BODY)),
            Rejection::StaleTimestamp(300)
        );
        assert_eq!(
            refused(&spec, &public, &sendgrid_request(&key, NOW + 301, BODY)),
            Rejection::FutureTimestamp
        );
    }

    fn every_scheme() -> Vec<ServiceSpec> {
        vec![
            ServiceSpec::TwilioSignature,
            ServiceSpec::StripeSignature {
                tolerance_secs: 300,
            },
            ServiceSpec::GithubSignature,
            ServiceSpec::SlackSignature {
                tolerance_secs: 300,
            },
            ServiceSpec::ShopifySignature,
            ServiceSpec::StandardWebhooksSignature {
                tolerance_secs: 300,
            },
            ServiceSpec::HmacSignature(acme_scheme()),
            ServiceSpec::SendgridSignature {
                tolerance_secs: 300,
            },
        ]
    }

    #[test]
    fn without_a_secret_every_scheme_refuses() {
        let req = request(&[], BODY);
        for spec in every_scheme() {
            assert_eq!(
                verify(&spec, None, &req),
                Err(Rejection::NoSecret),
                "{spec:?}"
            );
            for empty in ["", "  "] {
                let empty = SecretString::from(empty);
                assert_eq!(verify(&spec, Some(&empty), &req), Err(Rejection::NoSecret));
            }
        }
    }

    #[test]
    fn other_services_are_not_signature_schemes() {
        let req = request(&[("x-hub-signature-256", &sign_github(SECRET, BODY))], BODY);
        for spec in [
            ServiceSpec::GithubEvents,
            ServiceSpec::Identity,
            ServiceSpec::Script {
                source: "true".into(),
            },
        ] {
            assert_eq!(refused(&spec, SECRET, &req), Rejection::NotAScheme);
            assert_eq!(verify(&spec, None, &req), Err(Rejection::NotAScheme));
        }
    }

    #[test]
    fn the_window_is_inclusive_and_never_overflows() {
        assert_eq!(check_window(NOW - 300, NOW, 300), Ok(()));
        assert_eq!(check_window(NOW + 300, NOW, 300), Ok(()));
        assert_eq!(
            check_window(NOW - 301, NOW, 300),
            Err(Rejection::StaleTimestamp(300))
        );
        assert_eq!(
            check_window(NOW + 301, NOW, 300),
            Err(Rejection::FutureTimestamp)
        );
        assert_eq!(check_window(i64::MIN, i64::MAX, u64::MAX), Ok(()));
        assert_eq!(
            check_window(i64::MIN, NOW, 300),
            Err(Rejection::StaleTimestamp(300))
        );
        assert_eq!(
            check_window(i64::MAX, NOW, 300),
            Err(Rejection::FutureTimestamp)
        );
    }

    #[test]
    fn every_rejection_has_a_stable_code_and_a_text_without_the_secret() {
        let github = ServiceSpec::GithubSignature;
        let stripe = ServiceSpec::StripeSignature {
            tolerance_secs: 300,
        };
        let signed = request(&[("x-hub-signature-256", &sign_github(SECRET, BODY))], BODY);
        let seen = [
            (
                refused(&github, SECRET, &request(&[], BODY)),
                "missing_header",
            ),
            (
                refused(
                    &github,
                    SECRET,
                    &with_header(&signed, "x-hub-signature-256", SECRET),
                ),
                "malformed_signature",
            ),
            (
                refused(
                    &stripe,
                    SECRET,
                    &stripe_request(&format!("t={},v1=00", NOW - 999)),
                ),
                "stale_timestamp",
            ),
            (
                refused(
                    &stripe,
                    SECRET,
                    &stripe_request(&format!("t={},v1=00", NOW + 999)),
                ),
                "future_timestamp",
            ),
            (
                refused(&github, SECRET, &with_body(&signed, b"{}")),
                "bad_signature",
            ),
            (verify(&github, None, &signed).unwrap_err(), "no_secret"),
            (
                refused(&ServiceSpec::GithubEvents, SECRET, &signed),
                "not_a_scheme",
            ),
        ];
        let signature = signed.header("x-hub-signature-256").unwrap();
        for (rejection, code) in &seen {
            assert_eq!(rejection.code(), *code);
            let text = rejection.to_string();
            assert!(
                !text.contains(SECRET) && !text.contains(signature),
                "{text}"
            );
            assert!(!text.contains(&signature["sha256=".len()..]), "{text}");
        }
    }
}
