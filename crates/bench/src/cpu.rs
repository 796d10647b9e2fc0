//! How much of the machine other processes took while the benchmark ran:
//! on a contended machine every figure reads low, floors included, so the
//! table says how contended it was. From /proc/stat and /proc/<pid>/stat,
//! all in clock ticks; this process counts its reaped children (the
//! servers it started). A local PostgreSQL is counted apart: on that
//! backend it is part of the system under test, not a disturbance. So is
//! the time the hypervisor gave this virtual machine's CPUs to others
//! ("steal"): no process here used it, and no process here got it.

use anyhow::Context;

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    busy: u64,
    steal: u64,
    total: u64,
    own: u64,
    database: u64,
}

/// A process's command name and its CPU ticks: (utime + stime, cutime + cstime).
fn process_ticks(stat: &str) -> Option<(&str, u64, u64)> {
    let open = stat.find('(')?;
    let (comm, rest) = stat[open + 1..].rsplit_once(')')?;
    // After the name: state is field 3; utime..cstime are fields 14..17.
    let t: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse().ok())
        .collect();
    (t.len() == 4).then(|| (comm, t[0] + t[1], t[2] + t[3]))
}

/// CPU ticks of every PostgreSQL process, including the backends that have
/// exited since (their postmaster reaped them into its children's time).
fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut ticks = 0;
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(("postgres", own, children)) = process_ticks(&stat) {
            // Only a postmaster has reaped postgres children; a backend's
            // children's time is zero.
            ticks += own + children;
        }
    }
    ticks
}

/// The whole machine's CPU ticks from `/proc/stat`'s first line: busy
/// (user, nice, system, irq, softirq; guest time is inside user), steal, and
/// the total (busy, steal, idle and iowait).
fn machine_ticks(stat: &str) -> Option<(u64, u64, u64)> {
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let at = |i: usize| cpu.get(i).copied().unwrap_or(0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    let steal = at(7);
    Some((busy, steal, busy + steal + at(3) + at(4)))
}

impl Sample {
    pub fn now() -> anyhow::Result<Sample> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let (busy, steal, total) = machine_ticks(&stat).context("no cpu line in /proc/stat")?;
        let me = std::fs::read_to_string("/proc/self/stat")?;
        let (_, own, children) = process_ticks(&me).context("unreadable /proc/self/stat")?;
        Ok(Sample {
            busy,
            steal,
            total,
            own: own + children,
            database: postgres_ticks(),
        })
    }

    /// The shares of all CPU time from `self` to `later` that PostgreSQL,
    /// the other processes (neither this one nor its children) and the
    /// hypervisor (steal) took.
    pub fn since(&self, later: &Sample) -> (f64, f64, f64) {
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let own = later.own.saturating_sub(self.own) as f64;
        let database = later.database.saturating_sub(self.database) as f64;
        let steal = later.steal.saturating_sub(self.steal) as f64;
        (
            (database / total).clamp(0.0, 1.0),
            ((busy - own - database) / total).clamp(0.0, 1.0),
            (steal / total).clamp(0.0, 1.0),
        )
    }
}

/// The share of the machine's CPU time from `earlier` to `later` that was
/// spent running anything at all: this process, its children (the server),
/// PostgreSQL and every other process, user and kernel time alike. Time the
/// hypervisor gave to others (steal) counts as not busy: no process here
/// used it. `None` if no tick passed.
pub fn busy_share(earlier: &Sample, later: &Sample) -> Option<f64> {
    let total = later.total.saturating_sub(earlier.total);
    (total > 0)
        .then(|| (later.busy.saturating_sub(earlier.busy) as f64 / total as f64).clamp(0.0, 1.0))
}

/// The one-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(busy: u64, total: u64) -> Sample {
        Sample {
            busy,
            steal: 0,
            total,
            own: 0,
            database: 0,
        }
    }

    #[test]
    fn the_machine_line_counts_steal_and_iowait_as_not_busy() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let stat = "cpu  100 20 30 400 50 6 4 40 9 0\ncpu0 50 10 15 200 25 3 2 20 9 0\n";
        assert_eq!(machine_ticks(stat), Some((160, 40, 650)));
        // An older kernel's line without steal.
        assert_eq!(machine_ticks("cpu 1 2 3 4 5 6 7\n"), Some((19, 0, 28)));
        assert_eq!(machine_ticks("intr 1 2 3\n"), None);
    }

    #[test]
    fn busy_is_the_share_of_the_ticks_that_passed() {
        assert_eq!(busy_share(&at(100, 1000), &at(400, 1400)), Some(0.75));
        assert_eq!(busy_share(&at(0, 0), &at(0, 200)), Some(0.0));
        // No tick passed: no share. A counter that went back: none below 0.
        assert_eq!(busy_share(&at(5, 10), &at(5, 10)), None);
        assert_eq!(busy_share(&at(50, 100), &at(40, 200)), Some(0.0));
    }

    #[test]
    fn the_machine_reads_busier_while_a_thread_spins() {
        // /proc/stat counts every CPU of the machine, whatever this process
        // may use.
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count()
            .max(1) as f64;
        let before = Sample::now().expect("/proc/stat");
        let until = std::time::Instant::now() + std::time::Duration::from_millis(300);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
        let share = busy_share(&before, &Sample::now().expect("/proc/stat")).expect("ticks");
        // One spinning thread keeps most of one CPU busy.
        assert!(share >= 0.5 / cpus, "{share} with {cpus} CPUs");
    }
}
