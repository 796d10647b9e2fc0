//! The leak canary: one known secret value goes everywhere a secret can go
//! (API key, webhook secret, a rotated key, bad requests that carry it in
//! the wrong place, a provider that echoes it back, signatures made with it,
//! an export, an import, a backup), and the test fails if the value appears
//! in any response body, log line (at debug level), audit entry, error,
//! database file, export or backup.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use serde_json::{json, Value};
use support::*;

/// What the scans look for: the part every canary value shares.
const MARK: &str = "CanaryCanary7f3a9c2e41d8b605";

fn canary(prefix: &str, suffix: &str) -> String {
    format!("{prefix}{MARK}{suffix}")
}

/// A provider that refuses every key and quotes it back in its error, as a
/// careless API might: Latchkey must not pass the quote on.
fn echoing_provider() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut password = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line
                    .to_ascii_lowercase()
                    .strip_prefix("authorization: basic ")
                {
                    let raw = line[line.len() - v.len()..].trim();
                    let decoded = B64.decode(raw).unwrap_or_default();
                    let text = String::from_utf8_lossy(&decoded).into_owned();
                    password = text
                        .split_once(':')
                        .map(|(_, p)| p.to_string())
                        .unwrap_or(text);
                }
            }
            let body = json!({ "code": 20003, "message": format!("Authenticate failed for key {password}") })
                .to_string();
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

struct Seen {
    bodies: Vec<(String, String)>,
}

impl Seen {
    async fn call(&mut self, what: &str, req: reqwest::RequestBuilder) -> (u16, Value) {
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = format!("{:?}", res.headers());
        let text = res.text().await.unwrap();
        self.bodies
            .push((what.to_string(), format!("{headers}\n{text}")));
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_secret_never_shows_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let provider = echoing_provider();
    std::env::set_var("LATCHKEY_LOG", "debug");
    let server = start(&data, &["--allow-outbound", "127.0.0.1"]);
    std::env::remove_var("LATCHKEY_LOG");
    let token = server.token.clone().unwrap();
    let base = server.base.clone();
    let http = client();
    let mut seen = Seen { bodies: Vec::new() };
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth(&token);

    let stripe_key = canary("sk_test_", "");
    let webhook_secret = canary("whsec_", "");
    let twilio_key = canary("", "WXYZ");
    let rotated = canary("sk_test_", "R");

    // Created, read, listed, searched.
    let body = json!({
        "name": "Canary billing", "integration": "stripe", "api_key": stripe_key,
        "config_params": [{ "key": "webhook_secret", "value": webhook_secret }], "validate": false,
    });
    let (status, created) = seen
        .call(
            "create",
            auth(http.post(format!("{base}/v1/credentials"))).json(&body),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    seen.call("get", auth(http.get(format!("{base}/v1/credentials/{id}"))))
        .await;
    seen.call(
        "list",
        auth(http.get(format!("{base}/v1/credentials?q=canary"))),
    )
    .await;

    // Bad requests that carry the secret where it does not belong.
    let bad_bodies = [
        json!({ "name": "x", "integration": "stripe", "api_key": stripe_key, "surprise": stripe_key }),
        json!({ "name": "x", "integration": "stripe", "api_key": stripe_key, "scopes": stripe_key }),
        json!({ "name": "x", "integration": "stripe", "api_key": [stripe_key] }),
        json!({ "name": "x", "integration": "stripe", "api_key": format!("{stripe_key}!bad chars!") }),
        json!({ "name": "Canary billing", "integration": "stripe", "api_key": stripe_key, "validate": false }),
    ];
    for (n, bad) in bad_bodies.iter().enumerate() {
        let (status, _) = seen
            .call(
                &format!("bad create {n}"),
                auth(http.post(format!("{base}/v1/credentials"))).json(bad),
            )
            .await;
        assert!((400..500).contains(&status), "bad body {n}: {status}");
        seen.call(
            &format!("bad draft {n}"),
            auth(http.post(format!("{base}/v1/credentials/validate"))).json(bad),
        )
        .await;
    }
    let raw = format!("{{\"api_key\": \"{stripe_key}\", ");
    seen.call(
        "broken JSON",
        auth(http.post(format!("{base}/v1/credentials")))
            .header("content-type", "application/json")
            .body(raw),
    )
    .await;
    seen.call(
        "token as secret",
        http.get(format!("{base}/v1/credentials"))
            .bearer_auth(&stripe_key),
    )
    .await;

    // A provider that quotes the key back: the refusal reaches the client scrubbed.
    let twilio = json!({
        "name": "Canary SMS", "integration": "twilio", "api_key": twilio_key,
        "config_params": [
            { "key": "account_sid", "value": format!("AC{}", "0123456789abcdef".repeat(2)) },
            { "key": "api_key_sid", "value": format!("SK{}", "fedcba9876543210".repeat(2)) },
            { "key": "base_url", "value": provider },
        ],
    });
    let (status, refused) = seen
        .call(
            "provider echo",
            auth(http.post(format!("{base}/v1/credentials"))).json(&twilio),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or("")
            .contains("Authenticate failed"),
        "{refused}"
    );

    // Rotation, re-validation against the echoing provider, and the view.
    let mut saved = twilio.clone();
    saved["validate"] = json!(false);
    let (_, sms) = seen
        .call(
            "create sms",
            auth(http.post(format!("{base}/v1/credentials"))).json(&saved),
        )
        .await;
    let sms_id = sms["id"].as_str().unwrap().to_string();
    seen.call(
        "revalidate",
        auth(http.post(format!("{base}/v1/credentials/{sms_id}/validate"))),
    )
    .await;
    let (status, _) = seen
        .call(
            "rotate",
            auth(http.patch(format!("{base}/v1/credentials/{id}")))
                .header("if-match", "\"1\"")
                .json(&json!({ "api_key": rotated, "validate": false })),
        )
        .await;
    assert_eq!(status, 200);

    // Deliveries signed with the secret, good and bad.
    assert!(
        deliver(&http, &base, &id, "evt_canary_1").await.is_none(),
        "signed with another secret"
    );
    let good = {
        use hmac::{Hmac, Mac};
        let body = json!({ "id": "evt_canary_2", "type": "invoice.paid" }).to_string();
        let ts = chrono::Utc::now().timestamp();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(webhook_secret.as_bytes()).unwrap();
        mac.update(format!("{ts}.{body}").as_bytes());
        (
            body,
            format!("t={ts},v1={}", hex::encode(mac.finalize().into_bytes())),
        )
    };
    let (status, _) = seen
        .call(
            "signed delivery",
            http.post(format!("{base}/hooks/{id}"))
                .header("content-type", "application/json")
                .header("stripe-signature", &good.1)
                .body(good.0.clone()),
        )
        .await;
    assert_eq!(status, 200);
    seen.call(
        "secret in the signature header",
        http.post(format!("{base}/hooks/{id}"))
            .header("content-type", "application/json")
            .header("stripe-signature", format!("t=1,v1={webhook_secret}"))
            .body(good.0.clone()),
    )
    .await;
    seen.call("events", auth(http.get(format!("{base}/v1/events"))))
        .await;

    // Export, and import into another tenant.
    let passphrase = "canary export passphrase";
    let res = auth(http.post(format!("{base}/v1/credentials/export")))
        .json(&json!({ "passphrase": passphrase }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let export = res.bytes().await.unwrap().to_vec();
    let (_, tenant) = seen
        .call(
            "tenant",
            auth(http.post(format!("{base}/v1/tenants"))).json(&json!({ "name": "Canary two" })),
        )
        .await;
    let other = tenant["admin_token"]["token"].as_str().unwrap().to_string();
    let (status, imported) = seen
        .call(
            "import",
            http.post(format!("{base}/v1/credentials/import"))
                .bearer_auth(&other)
                .json(&json!({ "file": B64.encode(&export), "passphrase": passphrase })),
        )
        .await;
    assert_eq!(status, 201, "{imported}");
    seen.call(
        "audit",
        auth(http.get(format!("{base}/v1/audit?limit=200"))),
    )
    .await;
    seen.call(
        "audit of the other tenant",
        http.get(format!("{base}/v1/audit")).bearer_auth(&other),
    )
    .await;
    seen.call("metrics", http.get(format!("{base}/metrics")))
        .await;

    // A backup, then the server stopped so every file is final.
    let backup = dir.path().join("backup.db");
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args([
            "backup",
            "--from",
            &format!("sqlite://{}", data.display()),
            "--to",
        ])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = server.log.clone();
    drop(server);

    // The scans.
    assert!(seen.bodies.len() > 20);
    for (what, body) in &seen.bodies {
        assert!(
            !body.contains(MARK),
            "the canary leaked in the response to {what}: {body}"
        );
    }
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.lines().count() > 10,
        "the log was written (debug level)"
    );
    for line in log_text.lines() {
        assert!(
            !line.contains(MARK),
            "the canary leaked in a log line: {line}"
        );
    }
    let mut files = vec![backup.clone()];
    files_under(&data, &mut files);
    let mut scanned = 0;
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        scanned += bytes.len();
        assert!(
            !bytes.windows(MARK.len()).any(|w| w == MARK.as_bytes()),
            "the canary is in the clear in {}",
            file.display()
        );
    }
    assert!(
        !export.windows(MARK.len()).any(|w| w == MARK.as_bytes()),
        "the canary is in the clear in the export"
    );
    eprintln!(
        "canary checked in {} responses, {} log lines, {} files ({} bytes) and the export",
        seen.bodies.len(),
        log_text.lines().count(),
        files.len(),
        scanned
    );
}
