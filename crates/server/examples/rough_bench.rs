//! A first rough measurement (the full benchmark is a later piece of work):
//! credential creates per second with many concurrent clients, get-by-id and
//! search-page latency once `count` credentials are stored, then verified
//! Stripe webhook ingest (store-then-ack) and duplicate deliveries per second.
//!
//! `cargo run --release -p server --example rough_bench -- [count] [events]`
//!
//! With `LATCHKEY_BENCH_DATABASE_URL=postgres://…` the server runs on that
//! PostgreSQL, in a fresh schema `bench_<random>` dropped at the end;
//! otherwise on the embedded SQLite in a temporary data dir.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde_json::{json, Value};

const CLIENTS: usize = 64;

fn body(n: usize) -> Value {
    json!({
        "name": format!("bench credential {n:07}"),
        // Measures Latchkey, not a provider: no token validation call.
        "validate": false,
        "integration": if n.is_multiple_of(3) { "stripe" } else { "github" },
        "api_key": if n.is_multiple_of(3) { format!("sk_test_{n:024}") } else { format!("ghp_{n:036}") },
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let database_url = std::env::var("LATCHKEY_BENCH_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let schema = database_url.as_ref().map(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        format!("bench_{}_{nanos:x}", std::process::id())
    });
    match &schema {
        Some(s) => println!("backend: PostgreSQL, schema {s}"),
        None => println!("backend: SQLite"),
    }
    let config = server::Config {
        database_url: database_url.clone(),
        database_schema: schema.clone(),
        // Measures throughput: no per-credential delivery limit.
        ingress_limit: 0,
        ..server::Config::new("127.0.0.1:0".parse()?, dir.path().to_path_buf())
    };
    let (report, serving) = server::start(config, async move {
        let _ = stopped.await;
    })
    .await?;
    let serving = tokio::spawn(serving);
    let base = format!("http://{}", report.addr);
    let token = report
        .first_admin_token
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_string();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()?;

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, base, token, next) =
            (client.clone(), base.clone(), token.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                let res = client
                    .post(format!("{base}/v1/credentials"))
                    .bearer_auth(&token)
                    .json(&body(n))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed();
    println!(
        "create: {count} credentials in {:.1} s = {:.0}/s ({CLIENTS} clients)",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );

    let first: Value = client
        .get(format!("{base}/v1/credentials?limit=200"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let ids: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    for (label, paths) in [
        (
            "get by id",
            ids.iter()
                .map(|id| format!("/v1/credentials/{id}"))
                .collect::<Vec<_>>(),
        ),
        (
            "search page (q=credential 00, 50 rows)",
            vec!["/v1/credentials?q=credential%2000&limit=50".to_string()],
        ),
        (
            "search (q=0000123, one old match, via the trigram index)",
            vec!["/v1/credentials?q=0000123&limit=50".to_string()],
        ),
        (
            "search page (q=git, app name, 50 rows)",
            vec!["/v1/credentials?q=git&limit=50".to_string()],
        ),
        (
            "list page (50 rows)",
            vec!["/v1/credentials?limit=50".to_string()],
        ),
    ] {
        let mut lat = Vec::new();
        for i in 0..2000 {
            let t = Instant::now();
            let res = client
                .get(format!("{base}{}", paths[i % paths.len()]))
                .bearer_auth(&token)
                .send()
                .await?;
            assert_eq!(res.status(), 200);
            res.bytes().await?;
            lat.push(t.elapsed());
        }
        lat.sort();
        println!(
            "{label}: p50 {:.2} ms, p99 {:.2} ms (sequential, {count} stored)",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }
    let events: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    ingest(&client, &base, &token, events).await?;
    let _ = stop.send(());
    serving.await??;
    if let (Some(url), Some(schema)) = (database_url, schema) {
        let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        pg.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await?;
    }
    Ok(())
}

const SECRET: &str = "whsec_bench_0123456789abcdef";

fn stripe_delivery(n: usize) -> (String, String) {
    use hmac::{Hmac, Mac};
    let body = json!({ "id": format!("evt_{n:012}"), "type": "invoice.paid", "data": { "object": { "customer": format!("cus_{}", n % 1000) } } }).to_string();
    let ts = chrono::Utc::now().timestamp();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(body.as_bytes());
    (
        body,
        format!("t={ts},v1={}", hex::encode(mac.finalize().into_bytes())),
    )
}

async fn ingest(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    events: usize,
) -> anyhow::Result<()> {
    let cred: Value = client
        .post(format!("{base}/v1/credentials"))
        .bearer_auth(token)
        .json(&json!({
            "name": "bench stripe hooks", "integration": "stripe", "api_key": "sk_test_bench000000000000", "validate": false,
            "config_params": [ { "key": "webhook_secret", "value": SECRET } ],
        }))
        .send()
        .await?
        .json()
        .await?;
    let url = format!("{base}/hooks/{}", cred["id"].as_str().unwrap());
    // Signing happens before the clock starts: the figure is the server's.
    let deliveries: Arc<Vec<(String, String)>> =
        Arc::new((0..events).map(stripe_delivery).collect());
    for (label, expect) in [
        ("verified webhook ingest", "stored"),
        ("duplicate deliveries", "duplicate"),
    ] {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (client, url, next, deliveries) = (
                client.clone(),
                url.clone(),
                next.clone(),
                deliveries.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= deliveries.len() {
                        break lat;
                    }
                    let (body, sig) = &deliveries[n];
                    let t = Instant::now();
                    let res = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("stripe-signature", sig)
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 200);
                    let v: Value = res.json().await.unwrap();
                    assert_eq!(v["status"], expect);
                    lat.push(t.elapsed());
                }
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await?);
        }
        let elapsed = started.elapsed();
        lat.sort();
        println!(
            "{label}: {events} in {:.1} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms ({CLIENTS} clients)",
            elapsed.as_secs_f64(),
            events as f64 / elapsed.as_secs_f64(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }
    Ok(())
}
