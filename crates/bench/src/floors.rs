//! The machine's own limits, measured in the same run as the scenarios: the
//! disk's fsync rate (durability floor), one core's rate of bare AEAD opens
//! (crypto floor), an empty axum handler on the server's runtime settings
//! (HTTP floor), how often the machine takes a busy core away (pause
//! floor), and what it charges for memory its caches do not hold (memory
//! floor). Nothing here knows Latchkey.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::load::{drive, request, Plan};
use crate::sched::process_cpu;
use crate::{progress, Times};

/// The floors, measured once per run.
pub struct Floors {
    pub fsync_per_s: f64,
    pub aead_per_s: f64,
    pub http_rate: f64,
    /// The load generator's CPU time while it drove the empty handler
    /// (warm-up included), in cores: at or near its thread count, it, not
    /// the machine, set `http_rate` (lower does not rule that out: the time
    /// it waited for a core is not in it).
    pub http_load_cores: f64,
    pub http_p50: f64,
    pub http_p99: f64,
    pub http1_p50: f64,
    pub http1_p99: f64,
    pub pauses: Pauses,
    pub memory: Memory,
}

/// Measures every floor: fsync in `dir`'s filesystem, AEAD opens, the
/// pauses of busy cores, memory (with a file written in `dir`), and the empty
/// handler with `clients` clients and with one.
pub async fn measure(dir: &Path, clients: usize, times: &Times) -> anyhow::Result<Floors> {
    // Floors.
    let fsync_per_s = fsync_rate(dir, times.fsync)?;
    progress(format!("fsync floor: {fsync_per_s:.0}/s"));
    let aead_per_s = aead_open_rate(times.aead)?;
    progress(format!("AEAD floor: {aead_per_s:.0} opens/s on one core"));
    let pauses = pauses(cores(), times.pauses)?;
    progress(format!(
        "pause floor: {:.1} pauses over 1 ms per second per busy core, the longest {:.2} ms; \
         they alone would keep {:.2}% of arrivals waiting over {} ms",
        pauses.per_core_s,
        pauses.longest_ms,
        pauses.late_share * 100.0,
        LATE.as_millis()
    ));
    let memory = memory(dir, MEMORY_SPAN, times.aead)?;
    progress(format!(
        "memory floor: {:.0} ns a random read in {} MiB, {:.0} ns a page fault ({} taken; \
         huge pages: {}), {:.0} ns a 4 KiB read of a file just written",
        memory.random_read_ns,
        MEMORY_SPAN >> 20,
        memory.fault_ns,
        memory.faults,
        memory.huge_pages.as_deref().unwrap_or("?"),
        memory.cached_pread_ns
    ));
    let floor_server = FloorServer::start()?;
    let plan = Plan {
        clients,
        warmup: times.warmup,
        measure: times.throughput.min(Duration::from_secs(5)),
        rate: None,
    };
    let addr = floor_server.addr;
    let (cpu_before, wall_before) = (process_cpu(), Instant::now());
    let floor_load = drive(
        addr,
        plan,
        1,
        move |_| (0, request("GET", addr, "/", None, None)),
        |s, _| s.is_success(),
    )
    .await?;
    let http_load_cores = process_cpu().saturating_sub(cpu_before).as_secs_f64()
        / wall_before.elapsed().as_secs_f64();
    let floor_one = drive(
        addr,
        Plan {
            clients: 1,
            measure: times.single,
            ..plan
        },
        1,
        move |_| (0, request("GET", addr, "/", None, None)),
        |s, _| s.is_success(),
    )
    .await?;
    drop(floor_server);
    let floors = Floors {
        fsync_per_s,
        aead_per_s,
        http_rate: floor_load.rate(),
        http_load_cores,
        http_p50: floor_load.all().ms(50.0),
        http_p99: floor_load.all().ms(99.0),
        http1_p50: floor_one.all().ms(50.0),
        http1_p99: floor_one.all().ms(99.0),
        pauses,
        memory,
    };
    progress(format!(
        "HTTP floor: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms ({} clients; the load generator used {:.2} cores); one client p50 {:.3} ms, p99 {:.3} ms",
        floors.http_rate, floors.http_p50, floors.http_p99, clients, floors.http_load_cores, floors.http1_p50, floors.http1_p99
    ));

    Ok(floors)
}

/// The empty handler under an open loop: its latency when requests arrive
/// at a given rate, the floor of a scenario's open-loop row.
#[derive(Clone, Copy)]
pub struct OpenFloor {
    pub rate: f64,
    pub p50: f64,
    pub p99: f64,
    pub stalls: crate::load::Stalls,
}

/// The empty handler on `clients` connections, open loop at `rate`, for
/// `times.latency` (as the open-loop scenarios run): the latency the load
/// generator, the runtime and the machine's scheduler alone add at that
/// rate. Measured after the scenarios, with the server stopped.
///
/// Its stalls count the requests over `late`, the budget of the row it is
/// the floor of.
pub async fn open_loop(
    clients: usize,
    rate: f64,
    late: Duration,
    times: &Times,
) -> anyhow::Result<OpenFloor> {
    let floor_server = FloorServer::start()?;
    let addr = floor_server.addr;
    let outcome = drive(
        addr,
        Plan {
            clients,
            warmup: times.warmup,
            measure: times.latency,
            rate: Some(rate),
        },
        1,
        move |_| (0, request("GET", addr, "/", None, None)),
        |s, _| s.is_success(),
    )
    .await?;
    let floor = OpenFloor {
        rate,
        p50: outcome.all().ms(50.0),
        p99: outcome.all().ms(99.0),
        stalls: outcome.stalls(late),
    };
    progress(format!(
        "HTTP floor, open loop at {rate:.0}/s on {clients} connections: p50 {:.3} ms, p99 {:.3} ms; {}",
        floor.p50,
        floor.p99,
        floor.stalls.text()
    ));
    Ok(floor)
}

/// A gap between two readings of the clock by a spinning thread longer
/// than this is a pause: time the thread was ready to run and did not.
pub const PAUSE: Duration = Duration::from_millis(1);

/// The get budget's p99 ([`crate::report::GET_P99`]). A request that arrives at a
/// uniformly random moment of a pause of length `g` waits for its core for
/// more than this with probability `(g - LATE) / g`; summed over the pauses
/// and divided by the time spun, that is the share of arrivals the pauses
/// alone make wait longer than the budget, however fast the server.
pub const LATE: Duration = crate::report::GET_P99;

/// How often the machine took a busy core away from a thread that wanted
/// it (another thread, the kernel's own threads, the hypervisor): one
/// thread per usable CPU spinning on the clock, so every core is busy, as under
/// the scenarios' load. A request that is running, or queued, when its core
/// pauses waits out the pause; latency tails under load are read with
/// this beside them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pauses {
    pub threads: usize,
    /// Pauses over [`PAUSE`], per second and per spinning thread.
    pub per_core_s: f64,
    pub longest_ms: f64,
    /// The share of arrivals (at uniformly random moments) that the pauses
    /// alone would have kept waiting longer than [`LATE`]. While the machine
    /// pauses like this, a share above 1% puts a p99 within [`LATE`] out of
    /// reach of any server; under load the queue a pause leaves behind makes
    /// the share larger still.
    pub late_share: f64,
}

/// Gaps seen by one spinning thread, and how long it spun.
#[derive(Debug, Default, Clone, Copy)]
struct Gaps {
    over: u64,
    longest: Duration,
    /// The gaps' time beyond [`LATE`], summed.
    late: Duration,
    spun: Duration,
}

/// Spins for `time`, reading the clock; `between` runs between two
/// readings (nothing, except in tests).
fn spin(time: Duration, mut between: impl FnMut()) -> Gaps {
    let start = Instant::now();
    let mut last = start;
    let mut gaps = Gaps::default();
    while last.duration_since(start) < time {
        between();
        let now = Instant::now();
        let gap = now.duration_since(last);
        if gap > PAUSE {
            gaps.over += 1;
        }
        gaps.late += gap.saturating_sub(LATE);
        gaps.longest = gaps.longest.max(gap);
        last = now;
    }
    gaps.spun = last.duration_since(start);
    gaps
}

/// The spinners' gaps as pauses per second of spinning (so per core), the
/// longest, and the share of time beyond [`LATE`].
fn summarize(seen: &[Gaps]) -> Pauses {
    let spun: f64 = seen.iter().map(|g| g.spun.as_secs_f64()).sum();
    let over: u64 = seen.iter().map(|g| g.over).sum();
    let late: f64 = seen.iter().map(|g| g.late.as_secs_f64()).sum();
    let per_spun = |x: f64| if spun > 0.0 { x / spun } else { 0.0 };
    Pauses {
        threads: seen.len(),
        per_core_s: per_spun(over as f64),
        late_share: per_spun(late),
        longest_ms: seen
            .iter()
            .map(|g| g.longest.as_secs_f64() * 1000.0)
            .fold(0.0, f64::max),
    }
}

/// One spinning thread per usable CPU (`threads`) for `time`.
pub fn pauses(threads: usize, time: Duration) -> anyhow::Result<Pauses> {
    let seen = std::thread::scope(|s| {
        let spinners: Vec<_> = (0..threads.max(1))
            .map(|_| s.spawn(|| spin(time, || {})))
            .collect();
        spinners
            .into_iter()
            .map(|t| t.join())
            .collect::<Result<Vec<Gaps>, _>>()
    })
    .map_err(|_| anyhow::anyhow!("a thread of the pause floor panicked"))?;
    Ok(summarize(&seen))
}

/// The span [`memory`] reads at random: far more than any CPU cache, and
/// (in 4 KiB pages) than its TLB covers, as a B-tree of a million rows is.
pub const MEMORY_SPAN: usize = 256 << 20;

/// What the machine charges for memory its caches do not hold. A request
/// that walks a B-tree pays the first at every node not in the CPU's
/// caches, and SQLite the third for every page its own cache lacks; the
/// allocator pays the second when it takes fresh memory from the kernel.
/// The AEAD and HTTP floors run in the caches and hardly see these, so on
/// a machine (a nested virtual machine, say) where these are dear, the
/// scenarios read low against those floors; these figures show what that
/// machine charges, so two runs on different machines can be told apart.
/// They are not judged, and do not say how much of a request they are.
/// All three are on one thread.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    /// One read at a random place in [`MEMORY_SPAN`] bytes, each read's
    /// address the value the one before read (so none overlap), in ns.
    pub random_read_ns: f64,
    /// One page fault, taken by the first write to fresh memory, in ns.
    pub fault_ns: f64,
    /// The faults the first writes to the span took: one per 4 KiB page,
    /// fewer where the kernel gave larger pages (see `huge_pages`); 0 where
    /// `/proc/self/stat` could not be read, and then `fault_ns` is the
    /// time per 4 KiB page written.
    pub faults: u64,
    /// The kernel's transparent huge page mode (`always`, `madvise`,
    /// `never`), if it says: with `always` the span may sit in 2 MiB
    /// pages, which the TLB covers, and the random read is cheaper.
    pub huge_pages: Option<String>,
    /// A 4 KiB `pread` at a random 4 KiB offset of a 16 MiB file just
    /// written (so, on a local filesystem, in the page cache: a system call
    /// and a copy), in ns.
    pub cached_pread_ns: f64,
}

/// The slot after `at` in a random walk over `mask + 1` (a power of two)
/// slots: a full-period linear congruential step, so the walk passes every
/// slot once before it repeats.
fn next_slot(at: usize, mask: usize) -> usize {
    (at.wrapping_mul(6364136223846793005u64 as usize)
        .wrapping_add(1442695040888963407u64 as usize))
        & mask
}

/// The process's minor page faults so far (`/proc/self/stat`, field 10).
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command's closing parenthesis start at field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(7)?.parse().ok()
}

/// The kernel's transparent huge page mode: the bracketed word of
/// `/sys/kernel/mm/transparent_hugepage/enabled`.
fn huge_page_mode() -> Option<String> {
    let modes = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    let (_, rest) = modes.split_once('[')?;
    Some(rest.split_once(']')?.0.to_string())
}

/// Faults in `span` bytes of fresh memory (a power of two, at least 4
/// KiB) and walks them at random for `time`: (ns per read, ns per fault,
/// faults taken).
fn walk(span: usize, time: Duration) -> anyhow::Result<(f64, f64, u64)> {
    anyhow::ensure!(
        span.is_power_of_two(),
        "the span is a power of two of bytes"
    );
    anyhow::ensure!(span >= PAGE, "the span is at least 4 KiB");
    let slots = span / std::mem::size_of::<u64>();
    let per_page = PAGE / std::mem::size_of::<u64>();
    // Zeroed and not yet touched: the first write to each page faults.
    let mut walk = vec![0u64; slots];
    std::hint::black_box(walk.as_mut_ptr());
    let before = minor_faults();
    let start = Instant::now();
    for i in (0..slots).step_by(per_page) {
        walk[i] = std::hint::black_box(0);
    }
    let touched = start.elapsed();
    let faults = before
        .zip(minor_faults())
        .map_or(0, |(b, a)| a.saturating_sub(b));
    let fault_ns = per_op_ns(
        touched,
        if faults > 0 {
            faults
        } else {
            (slots / per_page) as u64
        },
    );
    // Each slot holds the next one's index: every read's address is the
    // value the read before returned.
    let mask = slots - 1;
    for (i, slot) in walk.iter_mut().enumerate() {
        *slot = next_slot(i, mask) as u64;
    }
    let (mut at, mut reads) = (0usize, 0u64);
    let start = Instant::now();
    while start.elapsed() < time {
        for _ in 0..4096 {
            at = walk[at] as usize;
        }
        reads += 4096;
    }
    let read_ns = per_op_ns(start.elapsed(), reads);
    std::hint::black_box(at);
    Ok((read_ns, fault_ns, faults))
}

/// Measures [`Memory`] over `span` bytes (a power of two, at least 4 KiB),
/// reading for `time`, with the file in `dir`.
pub fn memory(dir: &Path, span: usize, time: Duration) -> anyhow::Result<Memory> {
    use std::os::unix::fs::FileExt;
    let (random_read_ns, fault_ns, faults) = walk(span, time)?;

    const FILE: usize = 16 << 20;
    let mut file = tempfile::tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    file.write_all(&vec![0x5au8; FILE])?;
    let mut page = vec![0u8; PAGE];
    let pages = (FILE / PAGE) as u64;
    let (mut x, mut preads) = (0x9e37_79b9_7f4a_7c15u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < time {
        for _ in 0..256 {
            // xorshift64: a random page of the file.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            file.read_exact_at(&mut page, (x % pages) * PAGE as u64)?;
        }
        preads += 256;
    }
    Ok(Memory {
        random_read_ns,
        fault_ns,
        faults,
        huge_pages: huge_page_mode(),
        cached_pread_ns: per_op_ns(start.elapsed(), preads),
    })
}

const PAGE: usize = 4096;

fn per_op_ns(took: Duration, ops: u64) -> f64 {
    took.as_secs_f64() * 1e9 / ops.max(1) as f64
}

/// The CPUs this process may run on (its affinity; a fractional CPU quota
/// rounds up).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Small appends, each made durable with fdatasync, for `time`: syncs per
/// second on the filesystem of `dir`.
pub fn fsync_rate(dir: &Path, time: Duration) -> anyhow::Result<f64> {
    let mut file = tempfile::tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let record = [0x5au8; 128];
    let start = Instant::now();
    let mut syncs = 0u64;
    while start.elapsed() < time {
        file.write_all(&record)?;
        file.sync_data()?;
        syncs += 1;
    }
    Ok(syncs as f64 / start.elapsed().as_secs_f64())
}

/// XChaCha20-Poly1305 opens of a 40-byte secret with a credential-sized
/// associated data, on one core, key schedule done once: opens per second.
pub fn aead_open_rate(time: Duration) -> anyhow::Result<f64> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    let key = crypto::random_bytes(32)?;
    let nonce = crypto::random_bytes(24)?;
    let cipher = XChaCha20Poly1305::new_from_slice(&key).expect("a 32-byte key");
    let nonce = XNonce::from_slice(&nonce);
    let aad = b"latchkey/secret/v1 ten_01hzzzzzzzzzzzzzzzzzzzzzzz cred_01hzzzzzzzzzzzzzzzzzzzzzzz api_key";
    let secret = b"sk_test_0000000000000000000000000000000a";
    let sealed = cipher
        .encrypt(nonce, Payload { msg: secret, aad })
        .map_err(|_| anyhow::anyhow!("sealing failed"))?;
    let start = Instant::now();
    let mut opens = 0u64;
    while start.elapsed() < time {
        for _ in 0..256 {
            let plain = cipher
                .decrypt(
                    nonce,
                    Payload {
                        msg: std::hint::black_box(&sealed),
                        aad,
                    },
                )
                .map_err(|_| anyhow::anyhow!("opening failed"))?;
            std::hint::black_box(plain);
        }
        opens += 256;
    }
    Ok(opens as f64 / start.elapsed().as_secs_f64())
}

/// Serves `GET /` with an empty 200 on the runtime `latchkey serve` uses (a
/// default multi-thread tokio runtime) and prints its address. This is the
/// `http-floor` subcommand; the benchmark runs it as a child process so the
/// floor pays the same process and socket costs as the server.
pub fn serve_http_floor() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        let app = axum::Router::new().route("/", axum::routing::get(|| async {}));
        axum::serve(listener, app).await?;
        Ok(())
    })
}

/// The floor server as a child of this process; killed on drop.
pub struct FloorServer {
    child: Child,
    pub addr: SocketAddr,
}

impl FloorServer {
    pub fn start() -> anyhow::Result<FloorServer> {
        let me = std::env::current_exe()?;
        let mut child = Command::new(me)
            .arg("http-floor")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the HTTP floor server")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout is piped")).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("the floor server said {line:?}"))?;
        Ok(FloorServer { child, addr })
    }
}

impl Drop for FloorServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spinning_thread_counts_the_time_it_did_not_run_as_a_pause() {
        // Two "pauses" of 5 ms (a sleep stands in for the core being taken
        // away), then plain spinning.
        let mut left = 2;
        let gaps = spin(Duration::from_millis(30), || {
            if left > 0 {
                left -= 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        // (At least: the machine may pause the thread on its own too.)
        assert!(gaps.over >= 2, "{gaps:?}");
        assert!(gaps.longest >= Duration::from_millis(5), "{gaps:?}");
        // Each 5 ms pause is at least 3 ms past the 2 ms.
        assert!(gaps.late >= Duration::from_millis(6), "{gaps:?}");
    }

    #[test]
    fn pauses_are_counted_per_second_of_spinning_and_the_longest_kept() {
        let ms = Duration::from_millis;
        let seen = [
            Gaps {
                over: 3,
                longest: ms(7),
                late: ms(5) + ms(1),
                spun: ms(2000),
            },
            Gaps {
                over: 1,
                longest: ms(2),
                late: Duration::ZERO,
                spun: ms(2000),
            },
        ];
        assert_eq!(
            summarize(&seen),
            Pauses {
                threads: 2,
                per_core_s: 1.0,
                longest_ms: 7.0,
                late_share: 0.0015,
            }
        );
        assert_eq!(summarize(&[]).per_core_s, 0.0);
    }

    #[test]
    fn the_random_walk_visits_every_slot_once_before_it_repeats() {
        let mask = (1 << 12) - 1;
        let mut seen = vec![false; mask + 1];
        let mut at = 0;
        for _ in 0..=mask {
            assert!(!seen[at], "slot {at} visited twice");
            seen[at] = true;
            at = next_slot(at, mask);
        }
        assert_eq!(at, 0, "back at the start after every slot");
    }

    #[test]
    fn a_walk_beyond_the_caches_reads_slower_and_faults_its_pages_in() {
        let (small, _, _) = walk(16 << 10, Duration::from_millis(50)).unwrap();
        let (large, fault_ns, faults) = walk(64 << 20, Duration::from_millis(50)).unwrap();
        // 16 KiB sits in the first-level cache; 64 MiB in none of them.
        assert!(large > 2.0 * small, "{large} ns against {small} ns");
        assert!(fault_ns > 0.0);
        if minor_faults().is_some() {
            // One per 4 KiB page; fewer only with huge pages.
            let pages = (64 << 20) / PAGE as u64;
            // (Other tests' threads may add their own faults, never remove
            // any.)
            assert!(faults > 0, "{faults} faults");
            if huge_page_mode().as_deref() == Some("never") {
                // (The allocator may have written its header to the first.)
                assert!(faults >= pages - 1, "{faults} faults for {pages} pages");
            }
        }
    }

    #[test]
    fn the_memory_floor_refuses_a_span_it_cannot_walk() {
        let dir = tempfile::tempdir().unwrap();
        assert!(memory(dir.path(), 2 << 10, Duration::ZERO).is_err());
        assert!(memory(dir.path(), (8 << 10) + 8, Duration::ZERO).is_err());
        let m = memory(dir.path(), 8 << 10, Duration::from_millis(10)).unwrap();
        assert!(m.random_read_ns > 0.0 && m.cached_pread_ns > 0.0, "{m:?}");
    }

    #[test]
    fn the_fault_counter_reads_this_process() {
        let Some(before) = minor_faults() else {
            eprintln!("skipped: /proc/self/stat is not readable here");
            return;
        };
        let mut fresh = vec![0u8; 8 << 20];
        for i in (0..fresh.len()).step_by(PAGE) {
            fresh[i] = std::hint::black_box(1);
        }
        std::hint::black_box(&fresh);
        assert!(minor_faults().unwrap() > before);
    }

    #[test]
    fn a_spinner_reports_how_long_it_spun() {
        let g = spin(Duration::from_millis(20), || {});
        assert!(g.spun >= Duration::from_millis(20), "{g:?}");
    }
}
