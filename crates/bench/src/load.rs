//! The load generator: closed-loop clients, each on its own HTTP/1.1
//! keep-alive connection, so every request after the first reuses it by
//! construction (no pool to guess about). It shares the machine's cores with
//! the server it measures; that is part of every figure, floors included.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type Body = Full<Bytes>;

/// One keep-alive connection to a server.
pub struct Conn {
    sender: http1::SendRequest<Body>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { sender })
    }

    pub async fn send(&mut self, req: Request<Body>) -> anyhow::Result<(StatusCode, Bytes)> {
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// A request to `path` on the server at `addr`, with a bearer token and a
/// JSON body when given.
pub fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    b.body(Full::new(Bytes::from(body.unwrap_or_default())))
        .expect("a request built from valid parts")
}

/// How long, and with how many clients, a scenario runs.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub clients: usize,
    /// Runs but is not counted: connections settle, caches fill.
    pub warmup: Duration,
    pub measure: Duration,
}

/// What one scenario measured: completions inside the measured window and
/// their latencies (microseconds), per kind of request.
#[derive(Debug)]
pub struct Outcome {
    pub elapsed: Duration,
    /// Requests sent in total, warm-up included (e.g. credentials created).
    pub issued: u64,
    pub latencies: Vec<Vec<u32>>,
}

impl Outcome {
    pub fn count(&self) -> u64 {
        self.latencies.iter().map(|l| l.len() as u64).sum()
    }

    pub fn rate(&self) -> f64 {
        self.count() as f64 / self.elapsed.as_secs_f64()
    }

    /// All kinds together, sorted.
    pub fn all(&self) -> Latencies {
        Latencies::new(self.latencies.concat())
    }

    pub fn kind(&self, k: usize) -> Latencies {
        Latencies::new(self.latencies.get(k).cloned().unwrap_or_default())
    }
}

/// Sorted latencies in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    fn new(mut v: Vec<u32>) -> Latencies {
        v.sort_unstable();
        Latencies(v)
    }

    /// The `p`-th percentile (0–100) in milliseconds; 0 when empty.
    pub fn ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let i = ((self.0.len() as f64 * p / 100.0).ceil() as usize).clamp(1, self.0.len()) - 1;
        f64::from(self.0[i]) / 1000.0
    }

    pub fn samples(&self) -> usize {
        self.0.len()
    }
}

/// Runs `plan.clients` closed-loop clients against `addr`. `make(n)` builds
/// the n-th request (n counts from 0 over all clients) and names its kind;
/// `check` says whether an answer is the expected one. Any unexpected
/// answer fails the scenario: a fast wrong answer measures nothing.
pub async fn drive<M, C>(
    addr: SocketAddr,
    plan: Plan,
    kinds: usize,
    make: M,
    check: C,
) -> anyhow::Result<Outcome>
where
    M: Fn(u64) -> (usize, Request<Body>) + Send + Sync + 'static,
    C: Fn(StatusCode, &Bytes) -> bool + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let check = Arc::new(check);
    let next = Arc::new(AtomicU64::new(0));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let failed = Arc::new(AtomicBool::new(false));
    let mut conns = Vec::with_capacity(plan.clients);
    for _ in 0..plan.clients {
        conns.push(Conn::open(addr).await?);
    }
    let start = Instant::now();
    let counted_from = start + plan.warmup;
    let end = counted_from + plan.measure;
    let mut tasks = Vec::with_capacity(plan.clients);
    for mut conn in conns {
        let (make, check, next, failure, failed) = (
            make.clone(),
            check.clone(),
            next.clone(),
            failure.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<Vec<u32>> = vec![Vec::new(); kinds];
            loop {
                let sent = Instant::now();
                if sent >= end || failed.load(Ordering::Relaxed) {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                let (kind, req) = make(n);
                let answer = conn.send(req).await;
                let done = Instant::now();
                let problem = match answer {
                    Ok((status, body)) if check(status, &body) => None,
                    Ok((status, body)) => Some(format!(
                        "request {n}: unexpected answer {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )),
                    Err(e) => Some(format!("request {n}: {e:#}")),
                };
                if let Some(p) = problem {
                    failure.lock().expect("failure lock").get_or_insert(p);
                    failed.store(true, Ordering::Relaxed);
                    break;
                }
                if sent >= counted_from && done <= end {
                    let us = done.duration_since(sent).as_micros();
                    lat[kind].push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
            lat
        }));
    }
    let mut latencies: Vec<Vec<u32>> = vec![Vec::new(); kinds];
    for t in tasks {
        for (all, mine) in latencies.iter_mut().zip(t.await?) {
            all.extend(mine);
        }
    }
    if let Some(f) = failure.lock().expect("failure lock").take() {
        bail!("{f}");
    }
    Ok(Outcome {
        elapsed: plan.measure,
        issued: next.load(Ordering::Relaxed),
        latencies,
    })
}

/// A cheap, well-spread pseudo-random number from `n` (SplitMix64), so
/// clients pick records all over the table without a random generator.
pub fn spread(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
