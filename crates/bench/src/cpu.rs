//! How much of the machine other processes took while the benchmark ran:
//! on a contended machine every figure reads low, floors included, so the
//! table says how contended it was. From /proc/stat and /proc/self/stat,
//! both in clock ticks; this process counts its reaped children (the
//! servers it started).

use anyhow::Context;

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    busy: u64,
    total: u64,
    own: u64,
}

impl Sample {
    pub fn now() -> anyhow::Result<Sample> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .context("no cpu line in /proc/stat")?
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        let at = |i: usize| cpu.get(i).copied().unwrap_or(0);
        let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
        let total = busy + at(3) + at(4);
        let me = std::fs::read_to_string("/proc/self/stat")?;
        let fields: Vec<u64> = me
            .rsplit_once(')')
            .context("unreadable /proc/self/stat")?
            .1
            .split_whitespace()
            .skip(11)
            .take(4)
            .filter_map(|v| v.parse().ok())
            .collect();
        // utime stime cutime cstime
        Ok(Sample {
            busy,
            total,
            own: fields.iter().sum(),
        })
    }

    /// The share of all CPU time from `self` to `later` that other
    /// processes used.
    pub fn others_since(&self, later: &Sample) -> f64 {
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let own = later.own.saturating_sub(self.own) as f64;
        ((busy - own) / total).clamp(0.0, 1.0)
    }
}

/// The one-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
