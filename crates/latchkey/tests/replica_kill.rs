//! Two `latchkey serve` replicas on one PostgreSQL schema under load; one is
//! killed with SIGKILL in the middle. Every write either replica answered
//! with a 2xx is then readable through the survivor, and the survivor kept
//! answering throughout.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

#[derive(Default)]
struct Acked {
    /// (credential id, name) of every 201.
    credentials: Vec<(String, String)>,
    /// Event ids of every delivery answered `stored`.
    events: Vec<String>,
    /// Successes of the survivor after the kill.
    survivor_after_kill: usize,
    /// Successes of the killed replica before the kill.
    victim_before_kill: usize,
    victim_failures: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_replica_mid_load_loses_no_acknowledged_write() {
    let Some(schema) = pg_schema().await else {
        return;
    };
    let url = postgres_url();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--database-url", &url, "--database-schema", &schema.name];
    let mut a = start(&dir.path().join("a"), &args);
    let token = a.token.clone().unwrap();
    let b_dir = dir.path().join("b");
    std::fs::create_dir(&b_dir).unwrap();
    std::fs::copy(dir.path().join("a/master.key"), b_dir.join("master.key")).unwrap();
    let b = start(&b_dir, &args);
    let http = client();
    let hooks = create(&http, &a.base, &token, &stripe("Hooks"))
        .await
        .unwrap();

    let acked = Arc::new(Mutex::new(Acked::default()));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut tasks = Vec::new();
    for (replica, base) in [("a", a.base.clone()), ("b", b.base.clone())] {
        for worker in 0..6 {
            let (http, token, hooks, base) =
                (http.clone(), token.clone(), hooks.clone(), base.clone());
            let (acked, killed_at) = (acked.clone(), killed_at.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < deadline {
                    n += 1;
                    let name = format!("load {replica}{worker} {n}");
                    let (credential, event) = if n % 2 == 0 {
                        let id = create(&http, &base, &token, &stripe(&name)).await;
                        (id.map(|id| (id, name)), None)
                    } else {
                        let delivery = format!("evt_{replica}{worker}_{n}");
                        (None, deliver(&http, &base, &hooks, &delivery).await)
                    };
                    let ok = credential.is_some() || event.is_some();
                    let after_kill = killed_at.lock().unwrap().is_some();
                    {
                        let mut acked = acked.lock().unwrap();
                        match (replica, ok, after_kill) {
                            ("b", true, true) => acked.survivor_after_kill += 1,
                            ("a", true, false) => acked.victim_before_kill += 1,
                            ("a", false, _) => acked.victim_failures += 1,
                            _ => {}
                        }
                        acked.credentials.extend(credential);
                        acked.events.extend(event);
                    }
                    if !ok && replica == "a" {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    a.kill();
    *killed_at.lock().unwrap() = Some(Instant::now());
    for t in tasks {
        t.await.unwrap();
    }

    let acked = Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap();
    eprintln!(
        "acknowledged: {} credentials, {} events; victim {} ok before the kill, {} failed; survivor {} ok after it",
        acked.credentials.len(),
        acked.events.len(),
        acked.victim_before_kill,
        acked.victim_failures,
        acked.survivor_after_kill
    );
    assert!(
        acked.victim_before_kill > 0,
        "the killed replica was under load"
    );
    assert!(
        acked.victim_failures > 0,
        "requests to the killed replica failed"
    );
    assert!(acked.survivor_after_kill > 0, "the survivor kept serving");
    for (id, name) in &acked.credentials {
        let (status, c) = get_json(&http, &format!("{}/v1/credentials/{id}", b.base), &token).await;
        assert_eq!(status, 200, "acknowledged credential {id} is missing: {c}");
        assert_eq!(c["name"], name.as_str());
    }
    for id in &acked.events {
        let (status, e) = get_json(&http, &format!("{}/v1/events/{id}", b.base), &token).await;
        assert_eq!(status, 200, "acknowledged event {id} is missing: {e}");
        assert_eq!(e["credential_id"], hooks.as_str());
    }
    drop(b);
    schema.drop_schema().await;
}
