//! Crash test: many concurrent clients create credentials and deliver
//! webhooks while the server is killed with SIGKILL at random moments,
//! several rounds over the same data. After each restart every write that
//! got a 2xx, in this round or any before it, is present and intact (its
//! secret still opens: a delivery signed with it verifies), and everything
//! listed is whole. Runs on SQLite, and on PostgreSQL when one answers
//! (always in CI).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const ROUNDS: usize = 4;
const CLIENTS: usize = 12;

#[derive(Default)]
struct Acked {
    credentials: Vec<(String, String)>,
    events: Vec<(String, String)>,
}

/// A small xorshift generator, seeded from the clock and printed, so a
/// failing run's kill moments can be replayed with `LATCHKEY_CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn crash_rounds(data: &std::path::Path, args: &[&str]) {
    let seed = std::env::var("LATCHKEY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed {seed} (LATCHKEY_CRASH_SEED replays it)");
    let mut rng = Rng(seed);
    let http = client();
    let mut server = start(data, args);
    let token = server.token.clone().expect("first start prints the token");
    let hooks = create(&http, &server.base, &token, &stripe("Hooks"))
        .await
        .unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut checked_writes = 0;

    for round in 0..ROUNDS {
        let kill_after = Duration::from_millis(300 + rng.next() % 900);
        let stop = Instant::now() + kill_after + Duration::from_millis(300);
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let (http, token, hooks, base) = (
                http.clone(),
                token.clone(),
                hooks.clone(),
                server.base.clone(),
            );
            let acked = acked.clone();
            clients.push(tokio::spawn(async move {
                let mut n = 0;
                let mut failures = 0;
                while Instant::now() < stop && failures < 3 {
                    n += 1;
                    if n % 2 == 0 {
                        let name = format!("crash r{round} c{c} n{n}");
                        match create(&http, &base, &token, &stripe(&name)).await {
                            Some(id) => acked.lock().unwrap().credentials.push((id, name)),
                            None => failures += 1,
                        }
                    } else {
                        let delivery = format!("evt_r{round}_c{c}_n{n}");
                        match deliver(&http, &base, &hooks, &delivery).await {
                            Some(id) => acked.lock().unwrap().events.push((id, delivery)),
                            None => failures += 1,
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(kill_after).await;
        server.kill();
        for c in clients {
            c.await.unwrap();
        }
        server = start(data, args);

        // Every acknowledged write of every round so far, present and intact.
        let acked_now = {
            let a = acked.lock().unwrap();
            (a.credentials.clone(), a.events.clone())
        };
        for (id, name) in &acked_now.0 {
            let url = format!("{}/v1/credentials/{id}", server.base);
            let (status, c) = get_json(&http, &url, &token).await;
            assert_eq!(
                status, 200,
                "round {round}: acknowledged credential {id} is gone"
            );
            assert_eq!(c["name"], name.as_str(), "round {round}: {c}");
        }
        for (id, delivery) in &acked_now.1 {
            let url = format!("{}/v1/events/{id}", server.base);
            let (status, e) = get_json(&http, &url, &token).await;
            assert_eq!(
                status, 200,
                "round {round}: acknowledged event {id} is gone"
            );
            assert_eq!(e["payload"]["id"], delivery.as_str(), "round {round}: {e}");
        }
        // Nothing half-written: every credential listed is whole, and its
        // sealed webhook secret opens (a delivery signed with it verifies).
        let listed = all_pages(&http, &server.base, "/v1/credentials", &token).await;
        assert!(
            listed.len() > acked_now.0.len(),
            "listed at least the acknowledged ones"
        );
        for c in &listed {
            let id = c["id"].as_str().unwrap();
            let probe = format!("probe_r{round}_{id}");
            assert!(
                deliver(&http, &server.base, id, &probe).await.is_some(),
                "round {round}: credential {id} is listed but its secret does not open: {c}"
            );
        }
        checked_writes = acked_now.0.len() + acked_now.1.len();
        eprintln!(
            "round {round}: killed after {} ms; {} credentials and {} events acknowledged so far, all present; {} credentials listed and opened",
            kill_after.as_millis(),
            acked_now.0.len(),
            acked_now.1.len(),
            listed.len()
        );
    }
    assert!(
        checked_writes > ROUNDS * 10,
        "the load was real: {checked_writes} writes"
    );
    eprintln!("{ROUNDS} crash rounds survived; {checked_writes} acknowledged writes checked");

    // The leak canary through the crashes: the API key and webhook secret
    // every credential carried are nowhere in the clear, not in the log, the
    // data dir (database, WAL, whatever a kill left behind) or a backup.
    let backup = data.with_extension("backup.db");
    let mut from: Vec<String> = vec!["backup".into(), "--to".into(), backup.display().to_string()];
    match args.iter().position(|a| *a == "--database-url") {
        Some(i) => {
            from.extend(["--from".into(), args[i + 1].to_string()]);
            if let Some(j) = args.iter().position(|a| *a == "--database-schema") {
                from.extend(["--from-schema".into(), args[j + 1].to_string()]);
            }
        }
        None => {
            server.kill();
            from.extend(["--from".into(), format!("sqlite://{}", data.display())]);
        }
    }
    let from: Vec<&str> = from.iter().map(String::as_str).collect();
    let out = latchkey(&from);
    assert!(out.status.success(), "{}", text(&out));
    let mut files = vec![backup, server.log.clone()];
    files_under(data, &mut files);
    assert_no_secret_in(&files, &[STRIPE_API_KEY, STRIPE_WEBHOOK_SECRET]);
    eprintln!(
        "leak canary: {} files scanned, no secret in the clear",
        files.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_every_acknowledged_write_through_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    crash_rounds(&dir.path().join("data"), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_every_acknowledged_write_through_sigkill() {
    let Some(schema) = pg_schema().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_url();
    let args = ["--database-url", &url, "--database-schema", &schema.name];
    crash_rounds(&dir.path().join("data"), &args).await;
    schema.drop_schema().await;
}
