//! The load generator: clients, each on its own HTTP/1.1 keep-alive
//! connection, so every request after the first reuses it by construction
//! (no pool to guess about). It shares the machine's cores with the server
//! it measures; that is part of every figure, floors included.
//!
//! Two ways to send:
//!
//! - **Closed loop** (`Plan::rate` is `None`): each client sends its next
//!   request as soon as the last is answered. This finds the server's
//!   capacity, but its latency is set by the client count: with `c` clients
//!   always waiting, the mean latency is `c ÷ rate` (Little's law), whatever
//!   the server does.
//! - **Open loop** (`Plan::rate` is `Some(r)`): request `n` is due at
//!   `start + n / r`, whether or not earlier ones were answered, as a
//!   server's users would send them. A pacer thread releases each request
//!   at its due time, sleeping in between with the operating system's
//!   timer (which wakes it some tens of microseconds late on an idle
//!   core), and a free connection takes it at once. (tokio's timer ticks in milliseconds:
//!   connections sleeping on it woke in bursts of every request due in
//!   the last millisecond, a dozen at 12,000/s, which then queued behind
//!   each other in the server, a burstiness the users' traffic does not
//!   have.) Every request is timed from its due time, so the time it
//!   waited for a free connection counts, and so does any lag of the load
//!   generator (no "coordinated omission": a stall is not hidden by the
//!   load generator pausing with it). Every request due inside the
//!   measured window is counted, however late it finishes, and the rate is
//!   taken over the window or until the last of them was answered,
//!   whichever is longer: a server that falls behind shows a rate below
//!   the offered one.

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
use tokio::sync::Semaphore;

use crate::floors::PAUSE;

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
    /// Open loop at this many requests per second over all clients; `None`
    /// for closed loop (see the module's comment).
    pub rate: Option<f64>,
}

/// What one scenario measured: the requests counted (closed loop: answered
/// inside the measured window; open loop: due inside it) and their latencies
/// (microseconds), per kind of request.
#[derive(Debug)]
pub struct Outcome {
    /// The measured window; in open loop, longer if the last counted
    /// request was answered after it ended.
    pub elapsed: Duration,
    pub clients: usize,
    /// The open loop's rate; `None` for a closed loop.
    pub offered: Option<f64>,
    /// Closed loop: requests sent in total, warm-up included (e.g.
    /// credentials created). Open loop: requests claimed, which is up to one
    /// per connection more than were sent.
    pub issued: u64,
    /// Requests sent, warm-up included.
    pub sent: u64,
    pub latencies: Vec<Vec<u32>>,
    /// Open loop: each time, from the window's start on, that the pacer
    /// woke more than [`PAUSE`] after a request fell due: from when it was
    /// due to when the pacer woke. The pacer is a thread that only sleeps
    /// and wakes, so such a hold-up means no core ran it: all were taken
    /// (by the server, the load generator or anything else), or the
    /// machine paused.
    pub held: Vec<(Instant, Instant)>,
    /// Open loop: each counted request slower than [`PAUSE`], from when it
    /// was due to when it was answered (so [`Outcome::stalls`] can count
    /// those over any budget from 1 ms up).
    pub slow: Vec<(Instant, Instant)>,
    /// The CPU time the server's threads and the load generator used
    /// meanwhile, and the probe before, where the caller measured them.
    pub server: Option<crate::sched::Usage>,
    /// How busy the whole machine was over the run, connecting and warm-up
    /// included (see [`crate::cpu::busy_share`]), where the caller measured
    /// it.
    pub machine_busy: Option<f64>,
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

    /// The open loop's requests slower than `late` (at least [`PAUSE`]),
    /// and the pacer's hold-ups.
    pub fn stalls(&self, late: Duration) -> Stalls {
        let held_ms =
            |(from, until): &(Instant, Instant)| until.duration_since(*from).as_secs_f64() * 1000.0;
        let slow: Vec<_> = self
            .slow
            .iter()
            .copied()
            .filter(|(due, done)| done.duration_since(*due) > late)
            .collect();
        Stalls {
            late_ms: late.as_secs_f64() * 1000.0,
            slow: slow.len(),
            slow_while_held: overlapping(&slow, &self.held),
            held: self.held.len(),
            held_ms: self.held.iter().map(held_ms).sum(),
            longest_held_ms: self.held.iter().map(held_ms).fold(0.0, f64::max),
        }
    }
}

/// An open loop's requests slower than a budget (`late_ms`), and how many
/// of them coincided with a hold-up of the load generator's pacer: were
/// due or still in flight while it was held up (see [`Outcome::held`]).
/// This is a coincidence, not a cause: a hold-up says the cores were all
/// taken or the machine paused, not by whom, and a pause of the core a
/// request is on need not hold up the pacer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stalls {
    pub late_ms: f64,
    pub slow: usize,
    pub slow_while_held: usize,
    /// The pacer's hold-ups over [`PAUSE`] in the measured window, their
    /// total and the longest.
    pub held: usize,
    pub held_ms: f64,
    pub longest_held_ms: f64,
}

impl Stalls {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "budget_ms": self.late_ms,
            "over_budget": self.slow,
            "over_budget_while_load_generator_held_up": self.slow_while_held,
            "load_generator_hold_ups": self.held,
            "load_generator_held_up_ms": self.held_ms,
            "load_generator_longest_hold_up_ms": self.longest_held_ms,
        })
    }

    /// For a table cell.
    pub fn text(&self) -> String {
        format!(
            "{} over {} ms, {} of them while the load generator was held up ({} hold-ups, longest {:.1} ms)",
            self.slow,
            self.late_ms,
            self.slow_while_held,
            self.held,
            self.longest_held_ms
        )
    }
}

/// How many of `spans` overlap one of `held` (sorted by start, not
/// overlapping each other, as the pacer makes them).
fn overlapping(spans: &[(Instant, Instant)], held: &[(Instant, Instant)]) -> usize {
    spans
        .iter()
        .filter(|&&(from, until)| {
            // The last hold that starts before the span ends.
            let i = held.partition_point(|&(start, _)| start < until);
            i > 0 && held[i - 1].1 > from
        })
        .count()
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

/// When request `n` of an open loop at `rate` from `start` is due.
fn due_at(start: Instant, rate: f64, n: u64) -> Instant {
    start + Duration::from_secs_f64(n as f64 / rate)
}

/// The open loop's pacer: adds a permit to `permits` for each request as
/// it falls due, until the window ends or a request fails. Then it adds
/// one more per connection, so none is left waiting: a connection that
/// takes one finds its request due after the end (or the run failed) and
/// stops.
///
/// Returns each hold-up: a wake more than [`PAUSE`] after the request it
/// woke for fell due, as (due, woke).
fn pace(
    permits: &Semaphore,
    (start, end, rate): (Instant, Instant, f64),
    connections: usize,
    failed: &AtomicBool,
) -> Vec<(Instant, Instant)> {
    // The closing permits, also if this thread panics: a connection left
    // waiting would hang the run.
    struct Closing<'a>(&'a Semaphore, usize);
    impl Drop for Closing<'_> {
        fn drop(&mut self) {
            self.0.add_permits(self.1);
        }
    }
    let _closing = Closing(permits, connections);
    let mut held = Vec::new();
    let mut released = 0u64;
    loop {
        let now = Instant::now();
        let due = due_at(start, rate, released);
        if now.saturating_duration_since(due) > PAUSE {
            held.push((due, now));
        }
        let before = released;
        while due_at(start, rate, released) <= now && due_at(start, rate, released) < end {
            released += 1;
        }
        permits.add_permits((released - before) as usize);
        let next = due_at(start, rate, released);
        if next >= end || failed.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    held
}

/// Runs `plan.clients` clients against `addr`, closed or open loop as
/// `plan.rate` says. `make(n)` builds
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
    if let Some(rate) = plan.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("an open loop needs a positive rate, not {rate}");
        }
    }
    let make = Arc::new(make);
    let check = Arc::new(check);
    let next = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let failed = Arc::new(AtomicBool::new(false));
    let mut conns = Vec::with_capacity(plan.clients);
    for _ in 0..plan.clients {
        conns.push(Conn::open(addr).await?);
    }
    let start = Instant::now();
    let counted_from = start + plan.warmup;
    let end = counted_from + plan.measure;
    let permits = Arc::new(Semaphore::new(0));
    let pacer = match plan.rate {
        None => None,
        Some(rate) => {
            let (permits, failed) = (permits.clone(), failed.clone());
            Some(
                std::thread::Builder::new()
                    .name("open-loop-pacer".into())
                    .spawn(move || pace(&permits, (start, end, rate), plan.clients, &failed))
                    .context("cannot start the open loop's pacer")?,
            )
        }
    };
    let mut tasks = Vec::with_capacity(plan.clients);
    for mut conn in conns {
        let (make, check, next, failure, failed, permits) = (
            make.clone(),
            check.clone(),
            next.clone(),
            failure.clone(),
            failed.clone(),
            permits.clone(),
        );
        let sent_count = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<Vec<u32>> = vec![Vec::new(); kinds];
            let mut slow = Vec::new();
            let mut last_done = start;
            loop {
                // `due`: when the request counts from, for the window, and
                // (open loop) when its time starts.
                let (n, due, sent) = match plan.rate {
                    None => {
                        let sent = Instant::now();
                        if sent >= end || failed.load(Ordering::Relaxed) {
                            break;
                        }
                        (next.fetch_add(1, Ordering::Relaxed), sent, sent)
                    }
                    Some(rate) => {
                        match permits.acquire().await {
                            Ok(permit) => permit.forget(),
                            Err(_) => break,
                        }
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let due = due_at(start, rate, n);
                        if due >= end || failed.load(Ordering::Relaxed) {
                            break;
                        }
                        (n, due, due)
                    }
                };
                let (kind, req) = make(n);
                sent_count.fetch_add(1, Ordering::Relaxed);
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
                // Closed loop: what finished inside the window. Open loop:
                // everything due inside it, however late it finished, so a
                // slow tail cannot fall off the end.
                let counted = due >= counted_from && (plan.rate.is_some() || done <= end);
                if counted {
                    let took = done.duration_since(sent);
                    lat[kind].push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                    if plan.rate.is_some() && took > PAUSE {
                        slow.push((due, done));
                    }
                    last_done = last_done.max(done);
                }
            }
            (lat, slow, last_done)
        }));
    }
    let mut latencies: Vec<Vec<u32>> = vec![Vec::new(); kinds];
    let mut slow = Vec::new();
    let mut last_done = end;
    for t in tasks {
        let (mine, my_slow, done) = t.await?;
        for (all, mine) in latencies.iter_mut().zip(mine) {
            all.extend(mine);
        }
        slow.extend(my_slow);
        last_done = last_done.max(done);
    }
    let mut held = match pacer {
        Some(pacer) => tokio::task::spawn_blocking(move || pacer.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the open loop's pacer panicked"))?,
        None => Vec::new(),
    };
    held.retain(|&(_, woke)| woke > counted_from);
    if let Some(f) = failure.lock().expect("failure lock").take() {
        bail!("{f}");
    }
    Ok(Outcome {
        elapsed: last_done.duration_since(counted_from),
        clients: plan.clients,
        offered: plan.rate,
        issued: next.load(Ordering::Relaxed),
        sent: sent.load(Ordering::Relaxed),
        latencies,
        held,
        slow,
        server: None,
        machine_busy: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::floors::LATE;
    use std::sync::atomic::AtomicUsize;

    /// A server whose `k`-th answer (from 0) takes `stall`; every other is
    /// immediate.
    async fn stalling_server(k: usize, stall: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                let seen = seen.clone();
                async move {
                    if seen.fetch_add(1, Ordering::SeqCst) == k {
                        tokio::time::sleep(stall).await;
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    async fn run(addr: SocketAddr, rate: Option<f64>) -> Outcome {
        let plan = Plan {
            clients: 1,
            warmup: Duration::ZERO,
            measure: Duration::from_millis(1000),
            rate,
        };
        drive(
            addr,
            plan,
            1,
            move |_| (0, request("GET", addr, "/", None, None)),
            |s, _| s.is_success(),
        )
        .await
        .expect("the load ran")
    }

    fn slower_than(o: &Outcome, ms: u32) -> usize {
        o.latencies[0].iter().filter(|&&us| us >= ms * 1000).count()
    }

    const STALL: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn an_open_loop_counts_the_wait_behind_a_stall_and_a_closed_loop_does_not() {
        let open = run(stalling_server(0, STALL).await, Some(100.0)).await;
        // About 30 requests fell due while the one connection was stalled;
        // each waited for it, and is timed from when it was due.
        assert!(
            slower_than(&open, 100) >= 15,
            "open loop: {} of {} requests over 100 ms",
            slower_than(&open, 100),
            open.count()
        );
        assert!(open.all().ms(100.0) >= 250.0, "the stalled request itself");
        assert_eq!(open.count(), 100, "every request due in the window");
        assert_eq!(open.offered, Some(100.0));
        // Each one over 1 ms is kept with when it was due and answered, and
        // those over a budget are counted from them. (Latencies are kept in
        // whole microseconds: one of 2.0004 ms is over 2 ms but reads
        // 2,000 µs.)
        let over = |us: u32| open.latencies[0].iter().filter(|&&l| l > us).count();
        assert!(open.slow.len() >= over(1000) && open.slow.len() <= over(999));
        assert!(open
            .slow
            .iter()
            .all(|(due, done)| done.duration_since(*due) > PAUSE));
        let slow = open.stalls(LATE).slow;
        assert!(slow >= over(2000) && slow <= over(1999), "{slow}");
        assert!(slow >= 15, "{slow}");

        // The closed loop waits with the server: one slow request, not 30
        // (a few more only if the machine itself stalls).
        let closed = run(stalling_server(0, STALL).await, None).await;
        assert!(
            (1..=3).contains(&slower_than(&closed, 100)),
            "closed loop: {} slow",
            slower_than(&closed, 100)
        );
        assert!(
            closed.count() > 100,
            "a closed loop runs as fast as answered"
        );
        assert!(closed.slow.is_empty() && closed.held.is_empty());
    }

    #[test]
    fn slow_requests_are_matched_with_the_hold_ups_they_overlap() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let held = vec![(at(10), at(14)), (at(50), at(52))];
        let slow = vec![
            (at(8), at(11)),  // in flight when the first began
            (at(12), at(16)), // due inside it
            (at(14), at(17)), // due as it ended: not overlapping
            (at(30), at(49)), // between the two
            (at(40), at(60)), // spans the second
        ];
        assert_eq!(overlapping(&slow, &held), 3);
        assert_eq!(overlapping(&slow, &[]), 0);
        // Before the first hold, up to its start, and across both.
        assert_eq!(overlapping(&[(at(0), at(5))], &held), 0);
        assert_eq!(overlapping(&[(at(0), at(10))], &held), 0);
        assert_eq!(overlapping(&[(at(5), at(60))], &held), 1);
        let o = Outcome {
            elapsed: Duration::from_secs(1),
            clients: 1,
            offered: Some(100.0),
            issued: 100,
            sent: 100,
            latencies: vec![vec![]],
            held,
            slow,
            server: None,
            machine_busy: None,
        };
        assert_eq!(
            o.stalls(LATE),
            Stalls {
                late_ms: 2.0,
                slow: 5,
                slow_while_held: 3,
                held: 2,
                held_ms: 6.0,
                longest_held_ms: 4.0,
            }
        );
        // Over 3 ms: (12, 16), in the first hold; (30, 49), in none; and
        // (40, 60), across the second.
        let over_3 = o.stalls(Duration::from_millis(3));
        assert_eq!((over_3.slow, over_3.slow_while_held), (3, 2));
    }

    #[tokio::test]
    async fn an_open_loop_counts_a_tail_that_ends_after_the_window() {
        // Request 90 is due at 900 ms and takes 300: it and the nine due
        // behind it are answered after the 1 s window.
        let open = run(stalling_server(90, STALL).await, Some(100.0)).await;
        assert_eq!(open.count(), 100, "the late ones are counted");
        assert!(open.all().ms(100.0) >= 250.0, "with their wait");
        assert!(
            open.elapsed >= Duration::from_millis(1150),
            "the rate is taken until the last answer: {:?}",
            open.elapsed
        );
        assert!(
            open.rate() < 90.0,
            "below the offered 100/s: {}",
            open.rate()
        );
    }

    #[tokio::test]
    async fn an_open_loop_refuses_a_rate_that_is_not_positive() {
        let addr = stalling_server(usize::MAX, STALL).await;
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let plan = Plan {
                clients: 1,
                warmup: Duration::ZERO,
                measure: Duration::from_millis(10),
                rate: Some(rate),
            };
            let e = drive(
                addr,
                plan,
                1,
                move |_| (0, request("GET", addr, "/", None, None)),
                |s, _| s.is_success(),
            )
            .await
            .expect_err("refused");
            assert!(e.to_string().contains("positive rate"), "{e}");
        }
    }

    #[tokio::test]
    async fn the_pacer_releases_each_request_at_its_due_time_not_in_bursts() {
        // 8,000/s, one due every 125 µs. tokio's millisecond timer would
        // release these in bursts of 8 at once (7 of 8 gaps about zero).
        let (rate, window) = (8000.0, Duration::from_millis(250));
        let permits = Arc::new(Semaphore::new(0));
        let start = Instant::now() + Duration::from_millis(20);
        let end = start + window;
        let pacer = {
            let permits = permits.clone();
            std::thread::spawn(move || {
                pace(&permits, (start, end, rate), 4, &AtomicBool::new(false))
            })
        };
        let mut released = Vec::new();
        loop {
            permits.acquire().await.expect("open").forget();
            let now = Instant::now();
            let n = released.len() as u64;
            let due = due_at(start, rate, n);
            if due >= end {
                break;
            }
            assert!(now >= due, "request {n} released {:?} early", due - now);
            released.push(now);
        }
        pacer.join().expect("the pacer ran");
        assert_eq!(
            released.len(),
            2000,
            "every request due in the window, once"
        );
        assert_eq!(
            permits.available_permits(),
            3,
            "and one more per connection"
        );
        // A late wake-up releases what fell due meanwhile together; a
        // steady lag does not bunch them. Most gaps are a due interval.
        let bunched = released
            .windows(2)
            .filter(|w| w[1] - w[0] < Duration::from_micros(30))
            .count();
        assert!(
            bunched < released.len() / 2,
            "{bunched} of {} released within 30 µs of the one before",
            released.len() - 1
        );
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let l = Latencies::new((1..=100).rev().map(|ms| ms * 1000).collect());
        assert_eq!(l.ms(50.0), 50.0);
        assert_eq!(l.ms(99.0), 99.0);
        assert_eq!(l.ms(100.0), 100.0);
        assert_eq!(Latencies::new(Vec::new()).ms(99.0), 0.0);
    }
}
