//! Writes the seed corpus in `fuzz/corpus/<target>/`: real, valid inputs
//! for each target, checked here against the project's own entry points
//! (every signed delivery verifies, every payload parses, the catalog files
//! load, the export files open). Run from `fuzz/`, on stable, without the
//! fuzzing flags:
//!
//!     cargo run --example make_seeds -- ../../shared/vectors/webhook-signatures.json
//!
//! The published vectors (GitHub, Twilio, Standard Webhooks) come from the
//! given file; the other schemes are signed here the way the providers
//! document. `export_open/sealed-by-seal` is random (salt, nonce) each run.

use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use hmac::{Hmac, Mac};
use latchkey_fuzz::{decode, encode, Case, DEFAULT_NOW, DEFAULT_URL};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey as _;
use secrecy::SecretString;
use serde_json::{json, Value};
use services::parse::{parse_action, parse_webhook, WebhookOutcome};
use services::Inbound;

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
const JSON: (&str, &str) = ("content-type", "application/json");

fn main() {
    let vectors = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "../../shared/vectors/webhook-signatures.json".into());
    let vectors: Value = serde_json::from_str(
        &fs::read_to_string(&vectors).unwrap_or_else(|e| panic!("{vectors}: {e}")),
    )
    .unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    verify_seeds(&root.join("verify_signature"), &vectors);
    webhook_seeds(&root.join("parse_webhook"));
    action_seeds(&root.join("parse_action"));
    expr_seeds(&root.join("value_expr"));
    catalog_seeds(&root.join("catalog"));
    export_seeds(&root.join("export_open"));
    println!("seeds written under {}", root.display());
}

fn case(selector: u8, settings: &[(&str, &str)], headers: &[(&str, &str)], body: &[u8]) -> Case {
    Case {
        selector,
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        req: Inbound {
            method: "POST".into(),
            url: DEFAULT_URL.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
            body: body.to_vec(),
            now: DEFAULT_NOW,
        },
    }
}

/// Writes `case` and checks it reads back the same.
fn write(dir: &Path, name: &str, case: &Case) -> Case {
    fs::create_dir_all(dir).unwrap();
    let bytes = encode(case);
    let back = decode(&bytes).expect("a seed decodes");
    assert_eq!(back.selector, case.selector, "{name}");
    assert_eq!(back.settings, case.settings, "{name}");
    assert_eq!(back.req.url, case.req.url, "{name}");
    assert_eq!(back.req.headers, case.req.headers, "{name}");
    assert_eq!(back.req.body, case.req.body, "{name}");
    assert_eq!(back.req.now, case.req.now, "{name}");
    fs::write(dir.join(name), bytes).unwrap();
    back
}

fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <M as Mac>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}
type S1 = Hmac<sha1::Sha1>;
type S256 = Hmac<sha2::Sha256>;
type S512 = Hmac<sha2::Sha512>;

fn verify_seeds(dir: &Path, v: &Value) {
    let text = |x: &Value| x.as_str().unwrap().to_string();
    let mut seeds: Vec<(&str, Case)> = Vec::new();

    // Published: Twilio (form), GitHub, Standard Webhooks.
    let t = &v["twilio"];
    let fields: Vec<(String, String)> = t["form_params"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), text(v)))
        .collect();
    let body = serde_urlencoded::to_string(&fields).unwrap();
    let mut twilio = case(
        0,
        &[("secret", &text(&t["auth_token"]))],
        &[(&text(&t["header"]), &text(&t["signature"])), FORM],
        body.as_bytes(),
    );
    twilio.req.url = text(&t["url"]);
    seeds.push(("twilio-published", twilio));

    let g = &v["github"];
    seeds.push((
        "github-published",
        case(
            2,
            &[("secret", &text(&g["secret"]))],
            &[(&text(&g["header"]), &text(&g["signature"]))],
            text(&g["body"]).as_bytes(),
        ),
    ));

    let s = &v["standard_webhooks"];
    let mut standard = case(
        5,
        &[("secret", &text(&s["secret"]))],
        &[
            ("webhook-id", &text(&s["webhook-id"])),
            ("webhook-timestamp", &text(&s["webhook-timestamp"])),
            ("webhook-signature", &text(&s["webhook-signature"])),
        ],
        text(&s["body"]).as_bytes(),
    );
    standard.req.now = text(&s["webhook-timestamp"]).parse().unwrap();
    seeds.push(("standard-webhooks-published", standard));

    // Signed here.
    let now = DEFAULT_NOW.to_string();
    let body = br#"{"id":"evt_1","object":"event","type":"invoice.paid"}"#;

    // Twilio, JSON body: the URL carries bodySHA256.
    let json_body = br#"{"MessageSid":"SM2","Body":"hi"}"#;
    let url = format!(
        "{DEFAULT_URL}?bodySHA256={}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(json_body))
    );
    let sig = BASE64.encode(mac::<S1>(b"12345", &[url.as_bytes()]));
    let mut twilio_json = case(
        0,
        &[("secret", "12345")],
        &[("X-Twilio-Signature", &sig), JSON],
        json_body,
    );
    twilio_json.req.url = url;
    seeds.push(("twilio-json-body", twilio_json));

    let secret = "whsec_fuzzseedsecret0123456789";
    let v1 = hex::encode(mac::<S256>(
        secret.as_bytes(),
        &[now.as_bytes(), b".", body],
    ));
    seeds.push((
        "stripe",
        case(
            1,
            &[("secret", secret)],
            &[(
                "Stripe-Signature",
                &format!("t={now},v1={v1},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"),
            )],
            body,
        ),
    ));

    let slack_body =
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&command=%2Fweather&text=94070";
    let slack_sig = hex::encode(mac::<S256>(
        b"8f742231b10e8888abcd99yyyzzz85a5",
        &[b"v0:", now.as_bytes(), b":", slack_body],
    ));
    seeds.push((
        "slack",
        case(
            3,
            &[("secret", "8f742231b10e8888abcd99yyyzzz85a5")],
            &[
                ("X-Slack-Request-Timestamp", &now),
                ("X-Slack-Signature", &format!("v0={slack_sig}")),
                FORM,
            ],
            slack_body,
        ),
    ));

    let shopify_body = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;
    seeds.push((
        "shopify",
        case(
            4,
            &[("secret", "shpss_fuzzseed")],
            &[(
                "X-Shopify-Hmac-Sha256",
                &BASE64.encode(mac::<S256>(b"shpss_fuzzseed", &[shopify_body])),
            )],
            shopify_body,
        ),
    ));

    let key = SigningKey::from_slice(&[0x2a; 32]).unwrap();
    let public = BASE64.encode(key.verifying_key().to_public_key_der().unwrap().as_bytes());
    let events = br#"[{"email":"a@example.com","event":"delivered","sg_event_id":"e1"}]"#;
    let signature: Signature = key.sign(&[now.as_bytes(), &events[..]].concat());
    seeds.push((
        "sendgrid",
        case(
            6,
            &[("secret", &public)],
            &[
                ("X-Twilio-Email-Event-Webhook-Timestamp", &now),
                (
                    "X-Twilio-Email-Event-Webhook-Signature",
                    &BASE64.encode(signature.to_der().as_bytes()),
                ),
            ],
            events,
        ),
    ));

    let acme = hex::encode(mac::<S256>(b"acme-secret", &[now.as_bytes(), b".", body]));
    seeds.push((
        "hmac-sha256-timestamp",
        case(
            7,
            &[
                ("secret", "acme-secret"),
                ("alg", "sha256"),
                ("header", "X-Acme-Signature"),
                ("encoding", "hex"),
                ("prefix", "sha256="),
                ("content", "{timestamp}.{body}"),
                ("timestamp_header", "X-Acme-Timestamp"),
                ("tolerance", "300"),
            ],
            &[
                ("X-Acme-Timestamp", &now),
                ("X-Acme-Signature", &format!("sha256={acme}")),
            ],
            body,
        ),
    ));

    let signed = [
        b"POST ".as_slice(),
        DEFAULT_URL.as_bytes(),
        b" d-42 {other} ",
        body,
    ]
    .concat();
    seeds.push((
        "hmac-sha512-id-method-url",
        case(
            7,
            &[
                ("secret", "acme-secret"),
                ("alg", "sha512"),
                ("header", "X-Sig"),
                ("content", "{method} {url} {id} {other} {body}"),
                ("id_header", "X-Delivery"),
            ],
            &[
                ("X-Delivery", "d-42"),
                (
                    "X-Sig",
                    &hex::encode(mac::<S512>(b"acme-secret", &[&signed])),
                ),
            ],
            body,
        ),
    ));

    let millis = format!("{}123", DEFAULT_NOW);
    seeds.push((
        "hmac-sha1-base64-millis",
        case(
            7,
            &[
                ("secret", "acme-secret"),
                ("alg", "sha1"),
                ("encoding", "base64"),
                ("header", "X-Sig"),
                ("content", "{timestamp}:{body}"),
                ("timestamp_header", "X-Time"),
                ("millis", ""),
            ],
            &[
                ("X-Time", &millis),
                (
                    "X-Sig",
                    &BASE64.encode(mac::<S1>(b"acme-secret", &[millis.as_bytes(), b":", body])),
                ),
            ],
            body,
        ),
    ));

    for (name, seed) in seeds {
        let c = write(dir, name, &seed);
        let secret = c.get("secret").map(|s| SecretString::from(s.to_string()));
        assert_eq!(
            services::verify::verify(&c.signature_spec(), secret.as_ref(), &c.req),
            Ok(()),
            "seed {name} must verify"
        );
    }
}

fn webhook_seeds(dir: &Path) {
    let stripe = json!({
        "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event",
        "type": "customer.subscription.created", "account": "acct_1032D82eZvKYlo2C",
        "data": {"object": {"id": "sub_1", "object": "subscription", "customer": "cus_NffrFeUfNV2Hib"}}
    });
    let github = json!({
        "action": "opened",
        "issue": {"number": 1347, "title": "Found a bug"},
        "sender": {"login": "octocat", "id": 1}
    });
    let slack_challenge = json!({
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "type": "url_verification",
        "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    });
    let slack_event = json!({
        "team_id": "T123ABC456", "type": "event_callback", "event_id": "Ev123ABC456",
        "event": {"type": "message", "channel": "C123ABC456", "user": "U123ABC456", "text": "hi"}
    });
    let twilio = "ToCountry=US&SmsMessageSid=SM1a2b&NumMedia=0&Body=Hello+there&To=%2B15557654321&MessageSid=SM1a2b&From=%2B15551234567";
    let standard = json!({"type": "invoice.paid", "timestamp": "2024-01-01T00:00:00Z",
                          "data": {"customer_id": 1234}});
    let generic = json!({"type": "ticket.created", "user_id": "u-7", "id": "d-1",
                         "items": [{"name": "a", "price": 12}, {"name": "b", "price": 3}]});
    let seeds = [
        (
            "stripe",
            case(0, &[], &[JSON], stripe.to_string().as_bytes()),
        ),
        (
            "github",
            case(
                1,
                &[],
                &[
                    JSON,
                    ("X-GitHub-Event", "issues"),
                    ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
                ],
                github.to_string().as_bytes(),
            ),
        ),
        (
            "github-form",
            case(
                1,
                &[],
                &[FORM, ("X-GitHub-Event", "ping")],
                serde_urlencoded::to_string([(
                    "payload",
                    r#"{"zen":"Keep it simple.","hook_id":1}"#,
                )])
                .unwrap()
                .as_bytes(),
            ),
        ),
        (
            "slack-url-verification",
            case(2, &[], &[JSON], slack_challenge.to_string().as_bytes()),
        ),
        (
            "slack-event",
            case(2, &[], &[JSON], slack_event.to_string().as_bytes()),
        ),
        (
            "twilio-sms",
            case(
                3,
                &[],
                &[FORM, ("I-Twilio-Idempotency-Token", "tok-1")],
                twilio.as_bytes(),
            ),
        ),
        (
            "standard-webhooks",
            case(
                4,
                &[("app_user_id", "$.data.customer_id")],
                &[JSON, ("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")],
                standard.to_string().as_bytes(),
            ),
        ),
        (
            "json-events",
            case(
                5,
                &[
                    ("event_type", "$.type"),
                    ("app_user_id", "$.user_id"),
                    ("delivery_id", "header:X-Delivery"),
                    ("echo", "$.challenge"),
                    ("when", "$.type"),
                    ("equals", "url_verification"),
                ],
                &[JSON, ("X-Delivery", "d-1")],
                generic.to_string().as_bytes(),
            ),
        ),
    ];
    for (name, seed) in seeds {
        let c = write(dir, name, &seed);
        match parse_webhook(&c.webhook_parser_spec(), &c.req) {
            Ok(WebhookOutcome::Event(e)) => assert!(e.valid_request, "{name}"),
            Ok(WebhookOutcome::Handshake { .. }) => {}
            Err(e) => panic!("seed {name} must parse: {e}"),
        }
    }
    // A handshake on an empty body, the echo in the query string.
    let mut graph = case(
        5,
        &[("event_type", "$.type"), ("echo", "query:validationToken")],
        &[],
        b"",
    );
    graph.req.url = format!("{DEFAULT_URL}?validationToken=Validation%3A+Testing");
    let c = write(dir, "json-events-query-handshake", &graph);
    assert!(matches!(
        parse_webhook(&c.webhook_parser_spec(), &c.req),
        Ok(WebhookOutcome::Handshake { .. })
    ));
}

fn action_seeds(dir: &Path) {
    let block_actions = json!({
        "type": "block_actions", "trigger_id": "12466734323.1395872398",
        "user": {"id": "U0CA5"}, "response_url": "https://hooks.slack.com/actions/T0CA/1/abc",
        "actions": [{"action_id": "approve", "block_id": "b1", "type": "button", "value": "req-42"}]
    });
    let shortcut = json!({
        "type": "shortcut", "callback_id": "open_ticket", "trigger_id": "1.2",
        "user": {"id": "U1"}
    });
    let form = |v: &Value| serde_urlencoded::to_string([("payload", v.to_string())]).unwrap();
    let custom = json!({"type": "button_clicked", "action_id": "approve", "value": "42",
                        "user_id": "u-7", "response_url": "https://example.com/r"});
    let seeds = [
        (
            "slack-block-actions",
            case(0, &[], &[FORM], form(&block_actions).as_bytes()),
        ),
        (
            "slack-shortcut",
            case(0, &[], &[FORM], form(&shortcut).as_bytes()),
        ),
        (
            "json-action",
            case(
                1,
                &[
                    ("action_type", "$.type"),
                    ("action_id", "$.action_id"),
                    ("value", "$.value"),
                    ("app_user_id", "$.user_id"),
                    ("response_url", "$.response_url"),
                    ("delivery_id", "header:X-Request-Id"),
                ],
                &[JSON, ("X-Request-Id", "r-1")],
                custom.to_string().as_bytes(),
            ),
        ),
    ];
    for (name, seed) in seeds {
        let c = write(dir, name, &seed);
        parse_action(&c.action_parser_spec(), &c.req)
            .unwrap_or_else(|e| panic!("seed {name} must parse: {e}"));
    }
}

fn expr_seeds(dir: &Path) {
    let body = json!({
        "type": "order.created", "user": {"id": 42, "name": "Ada"},
        "items": [{"name": "a", "price": 12}, {"name": "b", "price": 3}],
        "a b": ["x"], "empty": "", "nothing": null
    });
    let mut json_case = case(
        0,
        &[
            ("expr", "$.user.id"),
            ("expr", "$..name"),
            ("expr", "$.items[?@.price > 10].name"),
            ("expr", "$.items[1:2:1]"),
            ("expr", "$['a b'][0]"),
            ("expr", "$[?length(@) > 1]"),
            ("expr", "$.nothing"),
            ("expr", "header:X-User"),
            ("expr", "query:user"),
            ("expr", "literal:fixed"),
            ("app_user_id", "app-7"),
        ],
        &[JSON, ("X-User", "u-9")],
        body.to_string().as_bytes(),
    );
    json_case.req.url = format!("{DEFAULT_URL}?user=u-1&x=%20y#frag");
    write(dir, "json-body", &json_case);
    write(
        dir,
        "form-body",
        &case(
            0,
            &[("expr", "form:From"), ("expr", "$.From"), ("expr", "form:")],
            &[FORM],
            b"From=%2B15551234567&Body=hi&From=second",
        ),
    );
}

fn catalog_seeds(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("../catalog");
    for (selector, file) in [
        (0u8, "integrations/openai.toml"),
        (0, "integrations/twilio.toml"),
        (1, "services/generic.toml"),
    ] {
        let text = fs::read_to_string(catalog.join(file)).unwrap();
        let name = file.replace('/', "-");
        let mut bytes = vec![selector];
        bytes.extend_from_slice(text.as_bytes());
        fs::write(dir.join(name), bytes).unwrap();
        let files = [("services/generic.toml", GENERIC), (file, text.as_str())];
        let files = if selector == 1 {
            &files[1..]
        } else {
            &files[..]
        };
        domain::Catalog::from_files(files.iter().copied())
            .unwrap_or_else(|e| panic!("seed {file} must load: {e}"));
    }
}

const GENERIC: &str = include_str!("../../catalog/services/generic.toml");

/// An export sealed the documented way (see crates/crypto/src/export.rs)
/// with a tiny Argon2 cost, so the fuzzer's runs of it reach a successful
/// open; and one sealed by `crypto::export::seal` itself (its cost is
/// folded by the target, so that one ends at the AEAD check).
fn export_seeds(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let passphrase = "correct horse battery";
    let content = br#"{"credentials":[{"integration":"stripe","fields":{"api_key":"sk_test_x"}}]}"#;
    let (m, t, p) = (32u32, 1u32, 1u32);
    let salt = [7u8; 16];
    let nonce = [9u8; 24];
    let mut file = b"LKEX\x01".to_vec();
    for v in [m, t, p] {
        file.extend_from_slice(&v.to_be_bytes());
    }
    file.extend_from_slice(&salt);
    let params = argon2::Params::new(m, t, p, Some(32)).unwrap();
    let mut key = [0u8; 32];
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), &salt, &mut key)
        .unwrap();
    let sealed = chacha20poly1305::XChaCha20Poly1305::new((&key).into())
        .encrypt(
            chacha20poly1305::XNonce::from_slice(&nonce),
            Payload {
                msg: content,
                aad: &file,
            },
        )
        .unwrap();
    file.extend_from_slice(&nonce);
    file.extend_from_slice(&sealed);
    let secret = SecretString::from(passphrase.to_string());
    assert_eq!(
        crypto::export::open(&secret, &file).unwrap().as_slice(),
        content,
        "the low-cost seed opens with the crate's own reader"
    );
    let with_passphrase = |file: &[u8]| {
        let mut out = vec![passphrase.len() as u8];
        out.extend_from_slice(passphrase.as_bytes());
        out.extend_from_slice(file);
        out
    };
    fs::write(dir.join("sealed-low-cost"), with_passphrase(&file)).unwrap();
    let real = crypto::export::seal(&secret, content).unwrap();
    fs::write(dir.join("sealed-by-seal"), with_passphrase(&real)).unwrap();
}
