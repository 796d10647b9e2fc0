//! Real `latchkey serve` processes for the tests that must kill, restart or
//! copy a server: started on port 0, found by their banner, logging to a
//! file (a pipe nobody reads would stall a busy server).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};

pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The admin token the first start printed, if this start printed one.
    pub token: Option<String>,
    pub log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Ends the process with SIGKILL: no drain, no flush, no goodbye.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts `latchkey serve` on the data dir with `extra` arguments and waits
/// for its banner. Its log goes to `<data_dir>.log`, appended across starts.
pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
    let log = data_dir.with_extension("log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env_remove("LATCHKEY_MASTER_KEY")
        .env_remove("LATCHKEY_DATABASE_URL")
        .env_remove("LATCHKEY_DATABASE_SCHEMA")
        .env_remove("LATCHKEY_DATABASE_POOL_SIZE")
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let mut base = None;
    let mut token = None;
    let mut seen = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(t) = line.trim().strip_prefix("LATCHKEY_TOKEN=") {
            token = Some(t.to_string());
        }
        if let Some(api) = line.trim().strip_prefix("API") {
            let url = api.split_whitespace().next().unwrap_or("");
            base = url.strip_suffix("/v1").map(str::to_string);
        }
        let done = line.contains("ready in");
        seen.push(line);
        if done {
            break;
        }
    }
    let base = base.unwrap_or_else(|| {
        panic!(
            "no banner: {seen:?}\nlog: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    Server {
        child,
        base,
        token,
        log,
    }
}

pub fn postgres_url() -> String {
    std::env::var("LATCHKEY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh PostgreSQL schema, dropped by [`PgSchema::drop_schema`].
pub struct PgSchema {
    pub name: String,
    admin: tokio_postgres::Client,
}

impl PgSchema {
    /// A connection of the test's own, outside the schema.
    pub fn admin(&self) -> &tokio_postgres::Client {
        &self.admin
    }

    pub async fn drop_schema(self) {
        self.admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .await
            .expect("drop the test schema");
    }
}

/// A schema on the local PostgreSQL; `None` (with a note) when no server
/// answers, which fails the test instead under CI.
pub async fn pg_schema() -> Option<PgSchema> {
    match tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await {
        Ok((admin, conn)) => {
            tokio::spawn(conn);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let name = format!("p_{}_{}", std::process::id(), nanos % 1_000_000_000);
            Some(PgSchema { name, admin })
        }
        Err(e) if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
            panic!("PostgreSQL is required under CI and does not answer: {e}")
        }
        Err(e) => {
            eprintln!("skipping: no PostgreSQL at {}: {e}", postgres_url());
            None
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub const STRIPE_WEBHOOK_SECRET: &str = "whsec_test_secret_0123456789abcdef";
/// The API key of every [`stripe`] credential.
pub const STRIPE_API_KEY: &str = "sk_test_4eC39HqLyjWDarjtT1zdp7dc";

/// A Stripe credential body whose webhook secret is [`STRIPE_WEBHOOK_SECRET`].
pub fn stripe(name: &str) -> Value {
    json!({
        "name": name,
        "integration": "stripe",
        "api_key": STRIPE_API_KEY,
        "config_params": [{ "key": "webhook_secret", "value": STRIPE_WEBHOOK_SECRET }],
        "validate": false,
    })
}

/// A Stripe event body and its `Stripe-Signature` header, signed now.
pub fn stripe_delivery(event_id: &str) -> (String, String) {
    stripe_delivery_signed(STRIPE_WEBHOOK_SECRET, event_id)
}

/// The same, signed with `secret`.
pub fn stripe_delivery_signed(secret: &str, event_id: &str) -> (String, String) {
    let body =
        json!({ "id": event_id, "type": "invoice.paid", "data": { "object": { "amount": 1250 } } })
            .to_string();
    let ts = chrono::Utc::now().timestamp();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}.{body}").as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    (body, format!("t={ts},v1={sig}"))
}

/// Creates a credential; its id on 201, else `None`.
pub async fn create(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    body: &Value,
) -> Option<String> {
    let res = client
        .post(format!("{base}/v1/credentials"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .ok()?;
    if res.status().as_u16() != 201 {
        return None;
    }
    let v: Value = res.json().await.ok()?;
    v["id"].as_str().map(str::to_string)
}

/// Delivers a signed Stripe event; the stored event's id on a 2xx that says
/// `stored`, else `None`.
pub async fn deliver(
    client: &reqwest::Client,
    base: &str,
    credential: &str,
    event_id: &str,
) -> Option<String> {
    deliver_signed(client, base, credential, STRIPE_WEBHOOK_SECRET, event_id).await
}

/// Delivers a Stripe event signed with `secret`; as [`deliver`].
pub async fn deliver_signed(
    client: &reqwest::Client,
    base: &str,
    credential: &str,
    secret: &str,
    event_id: &str,
) -> Option<String> {
    let (body, signature) = stripe_delivery_signed(secret, event_id);
    let res = client
        .post(format!("{base}/hooks/{credential}"))
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .ok()?;
    if !res.status().is_success() {
        return None;
    }
    let v: Value = res.json().await.ok()?;
    (v["status"] == "stored").then(|| v["event_id"].as_str().map(str::to_string))?
}

pub async fn get_json(client: &reqwest::Client, url: &str, token: &str) -> (u16, Value) {
    let res = client.get(url).bearer_auth(token).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Every item of a paged list, following its cursors.
pub async fn all_pages(http: &reqwest::Client, base: &str, path: &str, token: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{base}{path}{sep}limit=200&cursor={c}"),
            None => format!("{base}{path}{sep}limit=200"),
        };
        let (status, page) = get_json(http, &url, token).await;
        assert_eq!(status, 200, "{page}");
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return items,
        }
    }
}

/// Runs a client command (`latchkey keys …`) against `base` as `token`.
pub fn latchkey_as(base: &str, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .env("LATCHKEY_URL", base)
        .env("LATCHKEY_TOKEN", token)
        .env_remove("LATCHKEY_MASTER_KEY")
        .output()
        .unwrap()
}

/// Runs `latchkey ARGS` (an operator command) without any master key in
/// its environment.
pub fn latchkey(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .env_remove("LATCHKEY_MASTER_KEY")
        .output()
        .unwrap()
}

/// What a command printed, stdout then stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Fails if any of `secrets` appears, as bytes, in any of `files` (logs,
/// database files and their WAL, backups): the leak canary's check.
pub fn assert_no_secret_in(files: &[PathBuf], secrets: &[&str]) {
    assert!(!files.is_empty(), "no files to scan");
    for file in files {
        let bytes = std::fs::read(file).unwrap();
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret ({}…) shows in {}",
                &secret[..8.min(secret.len())],
                file.display()
            );
        }
    }
}
