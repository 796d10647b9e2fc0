//! Master key rotation on real `latchkey serve` processes under load.
//!
//! While clients keep creating credentials, reading them, delivering
//! webhooks that need each credential's sealed secret, and changing one
//! credential's webhook secret again and again, `latchkey keys rotate`
//! makes a new key active. Every request during the rotation must succeed;
//! afterwards every credential is wrapped by the new key, the old key is
//! retired and gone from the key file, and a restart with the new key file
//! alone opens everything.
//!
//! SQLite: one server that generates the new key itself. PostgreSQL: two
//! replicas that both hold a ring of two keys, rotated `--to` the second
//! through one of them while both serve.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const SEEDED: usize = 120;

struct Load {
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
    /// Requests that completed while the rotation was running.
    during: AtomicUsize,
    rotating: AtomicBool,
    stop: AtomicBool,
    /// The current webhook secret of the credential whose secret changes.
    secret: Mutex<String>,
    created: Mutex<Vec<String>>,
}

impl Load {
    fn record(&self, what: &str, ok: bool) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            if self.rotating.load(Ordering::Relaxed) {
                self.during.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            self.failures.lock().unwrap().push(what.to_string());
        }
    }
}

/// The keys in a key file (one base64 key per line).
fn key_ids(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect()
}

fn keys_json(base: &str, token: &str) -> Value {
    let out = latchkey_as(base, token, &["keys", "status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs the load against `bases` until stopped; worker 0 of the first
/// server keeps changing one credential's webhook secret.
fn spawn_load(
    bases: &[String],
    token: &str,
    seeded: Arc<Vec<String>>,
    changing: String,
    load: Arc<Load>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (r, base) in bases.iter().enumerate() {
        for worker in 0..4 {
            let (http, base, token) = (client(), base.clone(), token.to_string());
            let (seeded, load, changing) = (seeded.clone(), load.clone(), changing.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !load.stop.load(Ordering::Relaxed) {
                    n += 1;
                    let pick = &seeded[(n * 7 + worker * 13 + r) % seeded.len()];
                    match (worker, n % 4) {
                        (0, _) if r == 0 => {
                            // Per-credential secret rotation, then a delivery
                            // that only verifies with the new secret.
                            let new = format!("whsec_rotated_{n:04}_abcdefghijklmnop");
                            let (status, cur) = get_json(
                                &http,
                                &format!("{base}/v1/credentials/{changing}"),
                                &token,
                            )
                            .await;
                            let version = cur["version"].as_i64().unwrap_or(0);
                            let res = http
                                .patch(format!("{base}/v1/credentials/{changing}"))
                                .bearer_auth(&token)
                                .header("if-match", format!("\"{version}\""))
                                .json(&json!({
                                    "config_params": [{ "key": "webhook_secret", "value": new }],
                                    "validate": false,
                                }))
                                .send()
                                .await;
                            let ok = status == 200
                                && res.as_ref().is_ok_and(|r| r.status().as_u16() == 200);
                            load.record(&format!("secret change {n}: {res:?}"), ok);
                            if ok {
                                *load.secret.lock().unwrap() = new.clone();
                                let event = format!("evt_secret_{n}");
                                let stored =
                                    deliver_signed(&http, &base, &changing, &new, &event).await;
                                load.record(
                                    &format!("delivery with the changed secret {n}"),
                                    stored.is_some(),
                                );
                            }
                        }
                        (_, 0) => {
                            let id = create(
                                &http,
                                &base,
                                &token,
                                &stripe(&format!("load {r}.{worker}.{n}")),
                            )
                            .await;
                            load.record(&format!("create {r}.{worker}.{n}"), id.is_some());
                            load.created.lock().unwrap().extend(id);
                        }
                        (_, 1) => {
                            let (status, c) =
                                get_json(&http, &format!("{base}/v1/credentials/{pick}"), &token)
                                    .await;
                            load.record(&format!("get {pick}: {status} {c}"), status == 200);
                        }
                        _ => {
                            let event = format!("evt_{r}_{worker}_{n}");
                            let stored = deliver(&http, &base, pick, &event).await;
                            load.record(&format!("delivery to {pick}"), stored.is_some());
                        }
                    }
                }
            }));
        }
    }
    tasks
}

/// Every credential still opens: a delivery signed with its webhook secret
/// verifies (the server must unwrap its data key and open the secret).
async fn all_open(base: &str, ids: &[String], changing: &str, secret: &str) {
    let http = client();
    for (i, id) in ids.iter().enumerate() {
        let event = format!("evt_after_{i}");
        let stored = if id == changing {
            deliver_signed(&http, base, id, secret, &event).await
        } else {
            deliver(&http, base, id, &event).await
        };
        assert!(stored.is_some(), "credential {id} no longer opens");
    }
}

async fn seed(base: &str, token: &str) -> (Vec<String>, String) {
    let http = client();
    let mut ids = Vec::new();
    for i in 0..SEEDED {
        ids.push(
            create(&http, base, token, &stripe(&format!("seed {i:03}")))
                .await
                .expect("seed a credential"),
        );
    }
    let changing = create(&http, base, token, &stripe("changing secret"))
        .await
        .unwrap();
    (ids, changing)
}

fn new_load() -> Arc<Load> {
    Arc::new(Load {
        ok: AtomicUsize::new(0),
        failures: Mutex::new(Vec::new()),
        during: AtomicUsize::new(0),
        rotating: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        secret: Mutex::new(STRIPE_WEBHOOK_SECRET.into()),
        created: Mutex::new(Vec::new()),
    })
}

/// Rotates through the first of `bases` (with `--to` if given) while the load
/// runs, waiting until the old key is retired; returns how many credentials
/// exist then.
async fn rotate_under_load(
    bases: &[String],
    token: &str,
    to: Option<&str>,
    seeded: Arc<Vec<String>>,
    changing: &str,
    load: Arc<Load>,
) -> usize {
    let tasks = spawn_load(bases, token, seeded, changing.to_string(), load.clone());
    tokio::time::sleep(Duration::from_millis(600)).await;
    load.rotating.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let (base, token2) = (bases[0].clone(), token.to_string());
    let to = to.map(str::to_string);
    let out = tokio::task::spawn_blocking(move || {
        let mut args = vec!["keys", "rotate", "--wait", "--json"];
        if let Some(to) = &to {
            args.extend(["--to", to.as_str()]);
        }
        latchkey_as(&base, &token2, &args)
    })
    .await
    .unwrap();
    let took = started.elapsed();
    load.rotating.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(out.status.success(), "{}", text(&out));
    let failures = load.failures.lock().unwrap();
    eprintln!(
        "rotation took {took:?}; {} requests succeeded, {} of them during the rotation; {} failed",
        load.ok.load(Ordering::Relaxed),
        load.during.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "requests failed during rotation: {:?}",
        &failures[..failures.len().min(10)]
    );
    assert!(
        load.during.load(Ordering::Relaxed) >= 10,
        "the server was under load while it re-wrapped"
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        status["rotation"].is_null(),
        "--wait returns once retired: {status}"
    );
    SEEDED + 1 + load.created.lock().unwrap().len()
}

fn check_retired(status: &Value, old: &str, total: usize) -> String {
    let active = status["active"].as_str().unwrap().to_string();
    assert_ne!(active, old);
    assert!(status["rotation"].is_null(), "{status}");
    let keys = status["keys"].as_array().unwrap();
    let key = |id: &str| keys.iter().find(|k| k["id"] == id).unwrap().clone();
    assert_eq!(key(old)["state"], "retired", "{status}");
    assert_eq!(key(old)["credentials"], 0);
    assert!(key(old)["retired_at"].is_string());
    assert_eq!(key(&active)["state"], "active");
    assert_eq!(key(&active)["credentials"], total as u64, "{status}");
    active
}

/// Waits until the key file holds only one key (the retired one is removed
/// after a few seconds' grace for reads in flight).
async fn wait_for_single_key(file: &Path) {
    for _ in 0..100 {
        if key_ids(file).len() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the retired key is still in {}", file.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rotation_under_load_loses_nothing_and_retires_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start(
        &data,
        &["--auth-failure-limit", "0", "--ingress-limit", "0"],
    );
    let token = server.token.clone().unwrap();
    let before = keys_json(&server.base, &token);
    let old = before["active"].as_str().unwrap().to_string();
    let old_ring = std::fs::read(data.join("master.key")).unwrap();
    let (seeded, changing) = seed(&server.base, &token).await;
    let seeded = Arc::new(seeded);

    let load = new_load();
    let total = rotate_under_load(
        std::slice::from_ref(&server.base),
        &token,
        None,
        seeded.clone(),
        &changing,
        load.clone(),
    )
    .await;
    let created = load.created.lock().unwrap().clone();
    let new = check_retired(&keys_json(&server.base, &token), &old, total);
    let file = data.join("master.key");
    wait_for_single_key(&file).await;
    let audit = all_pages(&client(), &server.base, "/v1/audit", &token).await;
    let actions: Vec<&str> = audit.iter().filter_map(|a| a["action"].as_str()).collect();
    assert!(
        actions.contains(&"keys.rotate") && actions.contains(&"keys.retire"),
        "{actions:?}"
    );

    // A rotation to a key the server does not hold says what to do.
    let out = latchkey_as(
        &server.base,
        &token,
        &["keys", "rotate", "--to", "kek_0000000000000000"],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("does not hold key"), "{}", text(&out));

    // The old key alone (from a copy made before) is refused, naming the
    // key the data needs; the new key file alone opens everything.
    server.kill();
    let new_ring = std::fs::read(&file).unwrap();
    std::fs::write(&file, &old_ring).unwrap();
    let out = latchkey(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("sealed with key {new}")),
        "{}",
        text(&out)
    );
    // A key file that still holds the retired key (say, restored from an
    // older copy) starts, and the server removes the retired key from it.
    let mut both = old_ring.clone();
    both.push(b'\n');
    both.extend_from_slice(&new_ring);
    std::fs::write(&file, both).unwrap();
    let server = start(
        &data,
        &["--auth-failure-limit", "0", "--ingress-limit", "0"],
    );
    wait_for_single_key(&file).await;
    assert_eq!(
        std::fs::read(&file).unwrap(),
        new_ring,
        "the retired key is gone"
    );
    let again = keys_json(&server.base, &token);
    assert_eq!(again["active"], new.as_str());
    let secret = load.secret.lock().unwrap().clone();
    let mut all: Vec<String> = seeded.to_vec();
    all.extend(created);
    all.push(changing.clone());
    all_open(&server.base, &all, &changing, &secret).await;

    // The leak canary through rotation: no secret in the clear in the log,
    // the database, its WAL or either key file's history.
    let mut files = vec![server.log.clone()];
    files_under(&data, &mut files);
    assert_no_secret_in(&files, &[STRIPE_API_KEY, STRIPE_WEBHOOK_SECRET, &secret]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_rotate_to_a_distributed_key_under_load() {
    let Some(schema) = pg_schema().await else {
        return;
    };
    let url = postgres_url();
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a_dir, &b_dir] {
        std::fs::create_dir(d).unwrap();
    }
    // A ring of two keys, given to both replicas before they start: the
    // first becomes active on the empty data, the second is for later.
    let a_file = a_dir.join("master.key");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let out = latchkey(&["keys", "generate", "--key-file", a_file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        let said = text(&out);
        ids.push(
            said.split_whitespace()
                .find(|w| w.starts_with("kek_"))
                .unwrap()
                .to_string(),
        );
    }
    std::fs::copy(&a_file, b_dir.join("master.key")).unwrap();
    let args = [
        "--database-url",
        &url,
        "--database-schema",
        &schema.name,
        "--auth-failure-limit",
        "0",
        "--ingress-limit",
        "0",
    ];
    let a = start(&a_dir, &args);
    let token = a.token.clone().unwrap();
    let mut b = start(&b_dir, &args);
    let before = keys_json(&b.base, &token);
    assert_eq!(before["active"], ids[0].as_str(), "the ring's first key");
    let (seeded, changing) = seed(&a.base, &token).await;
    let seeded = Arc::new(seeded);

    let load = new_load();
    let total = rotate_under_load(
        &[a.base.clone(), b.base.clone()],
        &token,
        Some(&ids[1]),
        seeded.clone(),
        &changing,
        load.clone(),
    )
    .await;
    let created = load.created.lock().unwrap().clone();
    let new = check_retired(&keys_json(&a.base, &token), &ids[0], total);
    assert_eq!(new, ids[1]);
    // Both replicas follow, and both drop the retired key from their files.
    wait_for_single_key(&a_file).await;
    wait_for_single_key(&b_dir.join("master.key")).await;
    let via_b = keys_json(&b.base, &token);
    assert_eq!(via_b["active"], ids[1].as_str());

    // A replica restarted with its key file (now the new key alone) opens
    // every credential.
    b.kill();
    let secret = load.secret.lock().unwrap().clone();
    let b = start(&b_dir, &args);
    let mut all: Vec<String> = seeded.to_vec();
    all.extend(created);
    all.push(changing.clone());
    all_open(&b.base, &all, &changing, &secret).await;
    drop((a, b));
    schema.drop_schema().await;
}
