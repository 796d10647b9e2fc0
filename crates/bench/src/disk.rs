//! What the machine read from its disks while a scenario ran. Where the
//! page cache holds the whole database, a get never waits for a disk; where
//! the kernel has dropped some of its pages (memory pressure, or a
//! reclaimer that pages out file pages untouched for a while, as the
//! virtual machines this benchmark was written on run), a get that needs
//! one waits for the read: tens of microseconds on a local SSD,
//! milliseconds on network storage. The latency rows are read with this
//! figure beside them. From /proc/vmstat, so machine-wide: while a scenario
//! runs, its server (or PostgreSQL) is what reads.

/// Counters of /proc/vmstat, or their growth between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reads {
    /// KiB read from block devices (`pgpgin`).
    pub kib: u64,
    /// File pages read again after the kernel had dropped them from its
    /// cache (`workingset_refault_file`; `workingset_refault` before Linux
    /// 5.9).
    pub refaults: u64,
}

impl Reads {
    /// The counters now; zeros where /proc/vmstat cannot be read (not
    /// Linux), so the figure reads as "nothing seen", never as a failure.
    pub fn now() -> Reads {
        parse(&std::fs::read_to_string("/proc/vmstat").unwrap_or_default())
    }

    /// The growth from `self` to `later` (as `cpu::Sample::since`).
    pub fn since(&self, later: &Reads) -> Reads {
        Reads {
            kib: later.kib.saturating_sub(self.kib),
            refaults: later.refaults.saturating_sub(self.refaults),
        }
    }

    pub fn mib(&self) -> f64 {
        self.kib as f64 / 1024.0
    }
}

fn parse(vmstat: &str) -> Reads {
    let field = |name: &str| {
        vmstat.lines().find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<u64>().ok())?
        })
    };
    Reads {
        kib: field("pgpgin").unwrap_or(0),
        refaults: field("workingset_refault_file")
            .or_else(|| field("workingset_refault"))
            .unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_by_name_not_by_position() {
        let vmstat = "nr_free_pages 1387382\npgpgin 16099490\npgpgout 15995528\n\
                      workingset_refault_anon 3\nworkingset_refault_file 400018\n";
        assert_eq!(
            parse(vmstat),
            Reads {
                kib: 16_099_490,
                refaults: 400_018
            }
        );
    }

    #[test]
    fn an_older_kernel_names_its_refaults_without_file() {
        let vmstat = "pgpgin 12\nworkingset_refault 7\nworkingset_activate 9\n";
        assert_eq!(
            parse(vmstat),
            Reads {
                kib: 12,
                refaults: 7
            }
        );
    }

    #[test]
    fn growth_is_the_difference_and_never_wraps() {
        let before = Reads {
            kib: 100,
            refaults: 10,
        };
        let after = Reads {
            kib: 2148,
            refaults: 12,
        };
        assert_eq!(
            before.since(&after),
            Reads {
                kib: 2048,
                refaults: 2
            }
        );
        assert_eq!(after.since(&before), Reads::default());
        assert_eq!(before.since(&after).mib(), 2.0);
    }

    #[test]
    fn unreadable_counters_read_as_zero() {
        assert_eq!(parse(""), Reads::default());
        assert_eq!(parse("pgpgin many\n"), Reads::default());
    }
}
