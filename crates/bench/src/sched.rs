//! What the server's threads did while a scenario ran: their time on a CPU,
//! and their time ready to run but waiting for one (the run queue), from
//! `/proc/<pid>/task/<tid>/schedstat` (nanoseconds). The CPU time per
//! request is what the server's code costs at that load; the wait is what
//! sharing two cores with the load generator (and anything else) adds to
//! the latencies. Threads are matched by id between two samples, so a
//! thread that ends in between (an idle blocking-pool thread, say) loses
//! only its time inside the window. The load generator's own CPU time is
//! read from the process's CPU clock instead ([`process_cpu`]), which keeps
//! the time of threads that have ended. [`Usage`] holds both, and the CPU
//! probe run before the scenario.

use std::collections::HashMap;
use std::time::Duration;

/// Each thread's time on a CPU and waiting for one, by thread id.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Threads(HashMap<u64, (Duration, Duration)>);

/// Time on a CPU and time waiting for one, summed over threads.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Used {
    pub on_cpu: Duration,
    pub waiting: Duration,
}

/// A thread's time on a CPU and waiting on a run queue, from its schedstat
/// line (`on_cpu_ns waiting_ns timeslices`).
fn parse(line: &str) -> Option<(Duration, Duration)> {
    let mut f = line.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((
        Duration::from_nanos(f.next()??),
        Duration::from_nanos(f.next()??),
    ))
}

impl Threads {
    /// The process `pid`'s threads now; `None` when none can be read (the
    /// kernel keeps no schedstats, or the process is gone).
    pub fn of(pid: u32) -> Option<Threads> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let mut t = HashMap::new();
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(times) = std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|l| parse(&l))
            {
                t.insert(tid, times);
            }
        }
        (!t.is_empty()).then_some(Threads(t))
    }

    /// From this sample to a `later` one: each thread of `later` counted
    /// from its time here (from zero if it started in between).
    pub fn since(&self, later: &Threads) -> Used {
        let mut used = Used::default();
        for (tid, &(cpu, wait)) in &later.0 {
            let (cpu0, wait0) = self.0.get(tid).copied().unwrap_or_default();
            used.on_cpu += cpu.saturating_sub(cpu0);
            used.waiting += wait.saturating_sub(wait0);
        }
        used
    }
}

/// This process's CPU time so far, over all its threads, ended ones
/// included (the open loop's pacer thread ends with its run).
pub fn process_cpu() -> Duration {
    cpu_clock(rustix::time::ClockId::ProcessCPUTime)
}

fn cpu_clock(id: rustix::time::ClockId) -> Duration {
    let t = rustix::time::clock_gettime(id);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or_default(),
        u32::try_from(t.tv_nsec).unwrap_or_default(),
    )
}

/// The CPU time of one scenario: the server's threads (CPU per request,
/// and run-queue wait per second of the scenario, summed over threads, so
/// above 1,000 when several wait at once), the load generator's (this
/// process's) CPU per request, and the probe run just before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub cpu_us_per_request: f64,
    pub waiting_ms_per_s: f64,
    /// What the requests cost on the client's side of the same cores.
    pub load_cpu_us_per_request: f64,
    pub probe: Option<Probed>,
}

/// One core's speed just before a scenario (see `main.rs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probed {
    /// As a share of the AEAD floor measured at the start.
    pub share_of_floor: f64,
    /// The server's CPU time while the probe ran: near zero when it was
    /// idle, as it should be.
    pub server_cpu: Duration,
}

impl Usage {
    /// The server's `used` and the load generator's `load` CPU time over
    /// `requests` sent in `wall` time.
    pub fn new(used: Used, load: Duration, requests: u64, wall: Duration) -> Usage {
        let per = |x: f64, n: f64| if n > 0.0 { x / n } else { 0.0 };
        let cpu = |t: Duration| per(t.as_secs_f64() * 1e6, requests as f64);
        Usage {
            cpu_us_per_request: cpu(used.on_cpu),
            waiting_ms_per_s: per(used.waiting.as_secs_f64() * 1e3, wall.as_secs_f64()),
            load_cpu_us_per_request: cpu(load),
            probe: None,
        }
    }

    pub fn probed(self, probe: Probed) -> Usage {
        Usage {
            probe: Some(probe),
            ..self
        }
    }

    pub fn text(&self) -> String {
        let mut t = format!(
            "server {:.0} µs CPU per request, its threads waited {:.0} ms/s for a core · load generator {:.0} µs CPU per request",
            self.cpu_us_per_request, self.waiting_ms_per_s, self.load_cpu_us_per_request
        );
        if let Some(p) = self.probe {
            t.push_str(&format!(
                " · one core just before: {:.0}% of the AEAD floor",
                p.share_of_floor * 100.0
            ));
        }
        t
    }

    /// The row's JSON: `server_threads`, `load_generator` and, if it ran,
    /// `cpu_probe_before`.
    pub fn json(&self) -> serde_json::Value {
        let mut j = serde_json::json!({
            "server_threads": {
                "cpu_us_per_request": self.cpu_us_per_request,
                "run_queue_wait_ms_per_s": self.waiting_ms_per_s,
            },
            "load_generator": {
                "cpu_us_per_request": self.load_cpu_us_per_request,
            },
        });
        if let Some(p) = self.probe {
            j["cpu_probe_before"] = serde_json::json!({
                "share_of_aead_floor": p.share_of_floor,
                "server_cpu_ms_meanwhile": p.server_cpu.as_secs_f64() * 1e3,
            });
        }
        j
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedstat_line_gives_cpu_and_wait() {
        assert_eq!(
            parse("123456 7890 42\n"),
            Some((Duration::from_nanos(123456), Duration::from_nanos(7890)))
        );
        assert_eq!(parse("12"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn threads_are_matched_by_id_so_one_that_ended_loses_only_its_own_time() {
        let ms = Duration::from_millis;
        let before = Threads(HashMap::from([
            (1, (ms(100), ms(10))),
            (2, (ms(900), ms(90))),
        ]));
        // Thread 2 ended; thread 3 started.
        let later = Threads(HashMap::from([(1, (ms(150), ms(30))), (3, (ms(5), ms(1)))]));
        assert_eq!(
            before.since(&later),
            Used {
                on_cpu: ms(55),
                waiting: ms(21)
            }
        );
    }

    #[test]
    fn this_process_threads_are_read_and_grow_with_work() {
        if !std::path::Path::new("/proc/thread-self/schedstat").exists() {
            eprintln!("skipped: this kernel keeps no schedstats");
            return;
        }
        let me = std::process::id();
        let before = Threads::of(me).expect("this process's threads");
        // Spin until the threads have used 20 ms of CPU (however long a
        // busy machine takes to give them that), up to 10 s.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let used = loop {
            for _ in 0..100_000 {
                x = x.wrapping_add(std::hint::black_box(1));
            }
            let used = before.since(&Threads::of(me).expect("this process's threads"));
            if used.on_cpu >= Duration::from_millis(20) || start.elapsed() > Duration::from_secs(10)
            {
                break used;
            }
        };
        assert!(x > 0);
        assert!(used.on_cpu >= Duration::from_millis(20), "{used:?}");
    }

    #[test]
    fn usage_is_per_request_and_per_second() {
        let used = Used {
            on_cpu: Duration::from_millis(500),
            waiting: Duration::from_millis(300),
        };
        let u = Usage::new(
            used,
            Duration::from_millis(200),
            10_000,
            Duration::from_secs(4),
        );
        assert_eq!(u.cpu_us_per_request, 50.0);
        assert_eq!(u.waiting_ms_per_s, 75.0);
        assert_eq!(u.load_cpu_us_per_request, 20.0);
        assert_eq!(
            u.text(),
            "server 50 µs CPU per request, its threads waited 75 ms/s for a core · load generator 20 µs CPU per request"
        );
        assert_eq!(u.json()["server_threads"]["cpu_us_per_request"], 50.0);
        assert_eq!(u.json()["load_generator"]["cpu_us_per_request"], 20.0);
        assert!(u.json()["cpu_probe_before"].is_null());
        let probed = u.probed(Probed {
            share_of_floor: 0.874,
            server_cpu: Duration::from_micros(1500),
        });
        assert!(
            probed
                .text()
                .ends_with(" · one core just before: 87% of the AEAD floor"),
            "{}",
            probed.text()
        );
        assert_eq!(
            probed.json()["cpu_probe_before"]["share_of_aead_floor"],
            0.874
        );
        assert_eq!(
            probed.json()["cpu_probe_before"]["server_cpu_ms_meanwhile"],
            1.5
        );
        let none = Usage::new(used, Duration::ZERO, 0, Duration::ZERO);
        assert_eq!(none.cpu_us_per_request, 0.0);
        assert_eq!(none.waiting_ms_per_s, 0.0);
    }

    #[test]
    fn the_process_clock_counts_threads_that_have_ended() {
        let me = std::process::id();
        if Threads::of(me).is_none() {
            eprintln!("skipped: this kernel keeps no schedstats");
            return;
        }
        let thread_cpu = || cpu_clock(rustix::time::ClockId::ThreadCPUTime);
        let clock_before = process_cpu();
        let live_before = Threads::of(me).expect("this process's threads");
        let spun = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let mut x = 0u64;
            while thread_cpu() < Duration::from_millis(40) && start.elapsed().as_secs() < 10 {
                x = x.wrapping_add(std::hint::black_box(1));
            }
            assert!(x > 0);
            thread_cpu()
        })
        .join()
        .expect("the spinning thread");
        let live = live_before.since(&Threads::of(me).expect("this process's threads"));
        let counted = process_cpu() - clock_before;
        assert!(spun >= Duration::from_millis(40), "{spun:?}");
        // The spinning thread is gone, so a sum over live threads misses
        // it; the process clock keeps its time on top of theirs.
        assert!(
            counted >= live.on_cpu + spun,
            "process clock {counted:?} < live threads {:?} + ended thread {spun:?}",
            live.on_cpu
        );
    }
}
