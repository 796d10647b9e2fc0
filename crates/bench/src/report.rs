//! The result table: each scenario's figure, its budget from DESIGN.md §6,
//! whether it is met, and its ratios to the floors measured in the same run.

use std::time::Duration;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use serde_json::{json, Value};

use crate::floors::{Floors, OpenFloor};
use crate::load::{self, Outcome};
use crate::{server, RunArgs, SEARCHES};

/// A budget of DESIGN.md §6: the figure that must be reached and the aim.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// Higher is better (events per second).
    AtLeast { must: f64, aim: Option<f64> },
    /// Lower is better (milliseconds, megabytes).
    AtMost { must: f64, aim: Option<f64> },
}

impl Budget {
    fn verdict(&self, value: f64) -> &'static str {
        let (met_must, met_aim) = match *self {
            Budget::AtLeast { must, aim } => (value >= must, aim.is_some_and(|a| value >= a)),
            Budget::AtMost { must, aim } => (value <= must, aim.is_some_and(|a| value <= a)),
        };
        match (met_must, met_aim) {
            (_, true) => "pass (aim met)",
            (true, false) => "pass",
            (false, _) => "MISS",
        }
    }

    fn text(&self, unit: &str) -> String {
        match *self {
            Budget::AtLeast { must, aim } => format!(
                "≥ {} {unit}{}",
                thousands(must),
                aim.map(|a| format!(" (aim {})", thousands(a)))
                    .unwrap_or_default()
            ),
            Budget::AtMost { must, aim } => format!(
                "≤ {must} {unit}{}",
                aim.map(|a| format!(" (aim {a})")).unwrap_or_default()
            ),
        }
    }
}

/// The result column of a latency shown beside its budget but not judged on
/// it, within the budget or over it.
pub const NOT_JUDGED_WITHIN: &str = "not judged (within)";
pub const NOT_JUDGED_OVER: &str = "not judged (over)";

/// The names of the open-loop rows' floors, in the table and in the JSON.
pub const GET_HALF_BUSY: &str = "get, machine half busy";
pub const SEARCH_HALF_BUSY: &str = "search, machine half busy";
pub const GET_HALF_RATE: &str = "get, half the closed loop's rate";
pub const SEARCH_HALF_RATE: &str = "search, half the closed loop's rate";

/// The p99 budgets of DESIGN.md §6 for a get by id and a search page.
pub const GET_P99: Duration = Duration::from_millis(2);
pub const SEARCH_P99: Duration = Duration::from_millis(10);

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub figure: String,
    /// The value the budget is judged on, its unit, and the budget.
    pub judged: Option<(f64, &'static str, Budget)>,
    /// Shown next to the budget but not judged on it (a latency at a load
    /// the budgets are not given at: see `crate::HALF_BUSY`).
    pub shown_only: bool,
    pub vs_http: Option<String>,
    pub vs_fsync: Option<String>,
    pub vs_aead: Option<String>,
    /// The CPU time the scenario took on the server and on the load
    /// generator, and the probe before it.
    pub server: Option<String>,
    pub json: Value,
}

impl Row {
    pub fn new(scenario: impl Into<String>, figure: impl Into<String>) -> Row {
        Row {
            scenario: scenario.into(),
            figure: figure.into(),
            judged: None,
            shown_only: false,
            vs_http: None,
            vs_fsync: None,
            vs_aead: None,
            server: None,
            json: Value::Null,
        }
    }

    /// Notes the CPU time `o` took on the server and on the load generator,
    /// and the probe before it, if measured (after `json` is set).
    fn server_use(&mut self, o: &Outcome) {
        if let Some(u) = o.server {
            self.server = Some(u.text());
            if let Value::Object(parts) = u.json() {
                for (key, part) in parts {
                    self.json[key.as_str()] = part;
                }
            }
        }
    }

    pub fn budget(mut self, value: f64, unit: &'static str, budget: Budget) -> Row {
        self.judged = Some((value, unit, budget));
        self
    }

    /// The budget's verdict; none for a row without a budget or one shown
    /// only.
    pub fn verdict(&self) -> Option<&'static str> {
        if self.shown_only {
            return None;
        }
        self.judged.map(|(v, _, b)| b.verdict(v))
    }

    /// For a row shown only: whether its figure is within the budget.
    fn within(&self) -> Option<bool> {
        let (v, _, b) = self.judged.filter(|_| self.shown_only)?;
        Some(b.verdict(v) != "MISS")
    }

    /// What the table's result column says.
    fn result(&self) -> &'static str {
        match (self.verdict(), self.within()) {
            (Some(v), _) => v,
            (None, Some(true)) => NOT_JUDGED_WITHIN,
            (None, Some(false)) => NOT_JUDGED_OVER,
            (None, None) => "—",
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "figure": self.figure,
            "budget": self.judged.map(|(_, unit, b)| b.text(unit)),
            "judged_value": self.judged.map(|(v, _, _)| v),
            "verdict": self.verdict(),
            "shown_not_judged": self.shown_only,
            "shown_within_budget": self.within(),
            "vs_http_floor": self.vs_http,
            "vs_fsync_floor": self.vs_fsync,
            "vs_aead_floor": self.vs_aead,
            "detail": self.json,
        })
    }
}

pub fn table(rows: &[Row]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "scenario",
        "figure",
        "budget (DESIGN §6)",
        "result",
        "vs HTTP floor",
        "vs fsync floor",
        "in AEAD opens",
        "CPU: server · load generator · one core just before",
    ]);
    let dash = || "—".to_string();
    for r in rows {
        t.add_row(vec![
            Cell::new(&r.scenario),
            Cell::new(&r.figure),
            Cell::new(
                r.judged
                    .map(|(_, unit, b)| b.text(unit))
                    .unwrap_or_else(dash),
            ),
            Cell::new(r.result()),
            Cell::new(r.vs_http.clone().unwrap_or_else(dash)).set_alignment(CellAlignment::Right),
            Cell::new(r.vs_fsync.clone().unwrap_or_else(dash)).set_alignment(CellAlignment::Right),
            Cell::new(r.vs_aead.clone().unwrap_or_else(dash)).set_alignment(CellAlignment::Right),
            Cell::new(r.server.clone().unwrap_or_else(dash)),
        ]);
    }
    t
}

/// 12345.6 as "12,346".
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Which of the empty handler's latencies a latency row is compared with.
#[derive(Clone, Copy)]
enum Floor {
    /// Under the same closed loop.
    Closed,
    /// With one client.
    One,
    /// Open loop at the same rate on as many connections.
    Open(OpenFloor),
}

/// The scenarios' outcomes, for the table.
pub struct Measured<'a> {
    pub create: &'a Outcome,
    /// Closed loop: the capacity, and its queue's latency.
    pub get_load: &'a Outcome,
    /// Open loop at `PACED` of that rate.
    pub get_paced: &'a Outcome,
    /// Open loop with the machine about half busy: the judged row.
    pub get_half: &'a Outcome,
    pub get_one: &'a Outcome,
    pub search_load: &'a Outcome,
    pub search_paced: &'a Outcome,
    pub search_half: &'a Outcome,
    pub search_one: &'a Outcome,
    /// The empty handler, open loop at the open-loop rows' rates.
    pub get_floor: OpenFloor,
    pub search_floor: OpenFloor,
    /// And at the rates of the half-busy rows.
    pub get_half_floor: OpenFloor,
    pub search_half_floor: OpenFloor,
    pub ingest: &'a Outcome,
    pub duplicate: &'a Outcome,
}

/// Cold starts (spawn to ready, and the banner's figure) and memory.
pub struct Starts {
    pub cold_empty: (Duration, Option<u64>),
    pub cold_seeded: (Duration, Option<u64>),
    pub idle_empty: server::Memory,
    pub idle_seeded: server::Memory,
    pub after_gets: server::Memory,
    pub after_reads: server::Memory,
    pub at_end: server::Memory,
}

/// The table's rows: the scenarios, then the floors.
pub fn rows(run: &RunArgs, cores: usize, floors: &Floors, m: Measured, s: Starts) -> Vec<Row> {
    let c = run.clients;
    let scale = thousands(run.scale as f64);
    let per_s = |rate: f64| format!("{}/s", thousands(rate));
    let vs_http_rate = |rate: f64| {
        format!(
            "{:.0}% of {}",
            100.0 * rate / floors.http_rate,
            per_s(floors.http_rate)
        )
    };
    let vs_fsync = |rate: f64| format!("{:.1} per fsync", rate / floors.fsync_per_s);
    // Machine time per request (cores / rate) in bare opens.
    let aead_rate = |rate: f64| format!("{:.0}", cores as f64 * floors.aead_per_s / rate);
    // The median wait in bare opens.
    let aead_wait = |p50_ms: f64| format!("{:.0}", p50_ms / 1000.0 * floors.aead_per_s);
    let throughput = |o: &Outcome| {
        let l = o.all();
        json!({ "per_s": o.rate(), "count": o.count(), "seconds": o.elapsed.as_secs_f64(),
                "p50_ms": l.ms(50.0), "p99_ms": l.ms(99.0), "max_ms": l.ms(100.0) })
    };
    // Each latency is compared with the empty handler's under the same
    // load: the same closed loop, one client, or an open loop at the same
    // rate on as many connections.
    let latency_row = |name: String,
                       l: load::Latencies,
                       o: &Outcome,
                       floor: Floor,
                       budget: Budget,
                       judged: bool| {
        let (f50, f99, label) = match floor {
            Floor::Closed => (floors.http_p50, floors.http_p99, ""),
            Floor::One => (floors.http1_p50, floors.http1_p99, " 1-client floor"),
            Floor::Open(f) => (f.p50, f.p99, " open-loop floor"),
        };
        let mut r = Row::new(
            name,
            format!(
                "p50 {:.2} ms · p99 {:.2} ms · {}",
                l.ms(50.0),
                l.ms(99.0),
                per_s(l.samples() as f64 / o.elapsed.as_secs_f64())
            ),
        )
        .budget(l.ms(99.0), "ms p99", budget);
        r.shown_only = !judged;
        r.vs_http = Some(format!(
            "p50 {:.1}×, p99 {:.1}×{}",
            l.ms(50.0) / f50,
            l.ms(99.0) / f99,
            label
        ));
        r.vs_aead = Some(aead_wait(l.ms(50.0)));
        r.json = json!({ "p50_ms": l.ms(50.0), "p99_ms": l.ms(99.0), "max_ms": l.ms(100.0),
                         "count": l.samples(), "per_s": l.samples() as f64 / o.elapsed.as_secs_f64(),
                         "open_loop_per_s": o.offered, "clients": o.clients,
                         "machine_busy": o.machine_busy });
        if let Floor::Open(f) = floor {
            let must = match budget {
                Budget::AtMost { must, .. } | Budget::AtLeast { must, .. } => must,
            };
            let stalls = o.stalls(Duration::from_secs_f64(must / 1000.0));
            r.figure = format!("{} · {}", r.figure, stalls.text());
            r.json["stalls"] = stalls.json();
            r.json["floor_stalls"] = f.stalls.json();
        }
        r
    };
    // The rows of a whole run also say what CPU time the server and the
    // load generator used, and how fast one core ran just before.
    let with_server = |mut r: Row, o: &Outcome| {
        r.server_use(o);
        r
    };
    let get_budget = Budget::AtMost {
        must: GET_P99.as_secs_f64() * 1000.0,
        aim: Some(1.0),
    };
    let search_budget = Budget::AtMost {
        must: SEARCH_P99.as_secs_f64() * 1000.0,
        aim: Some(5.0),
    };
    let mut rows = Vec::new();

    let mut r = Row::new(
        format!("1. credential create, {c} clients"),
        format!(
            "{} · p99 {:.2} ms",
            per_s(m.create.rate()),
            m.create.all().ms(99.0)
        ),
    )
    .budget(
        m.create.rate(),
        "/s",
        Budget::AtLeast {
            must: 5_000.0,
            aim: Some(10_000.0),
        },
    );
    r.vs_http = Some(vs_http_rate(m.create.rate()));
    r.vs_fsync = Some(vs_fsync(m.create.rate()));
    r.vs_aead = Some(aead_rate(m.create.rate()));
    r.json = throughput(m.create);
    r.server_use(m.create);
    rows.push(r);

    // The open loop's rate as a share of the closed loop's (`capacity`).
    let share = |o: &Outcome, capacity: &Outcome| {
        100.0 * o.offered.unwrap_or_default() / capacity.rate().max(f64::MIN_POSITIVE)
    };
    let busy = |o: &Outcome| o.machine_busy.unwrap_or_default() * 100.0;
    let paced = |o: &Outcome, capacity: &Outcome| {
        format!(
            "{c} connections, open loop at {} ({:.0}% of the closed loop's rate), machine {:.0}% busy",
            per_s(o.offered.unwrap_or_default()),
            share(o, capacity),
            busy(o)
        )
    };
    let half = |o: &Outcome, capacity: &Outcome| {
        format!(
            "{c} connections, open loop at {} ({:.0}% of the closed loop's rate), machine {:.0}% busy (target {:.0}%)",
            per_s(o.offered.unwrap_or_default()),
            share(o, capacity),
            busy(o),
            crate::HALF_BUSY * 100.0
        )
    };
    // The budgets are judged with the machine half busy and with one
    // client; the closed loop and the open loop at half its rate are shown
    // beside them (see `crate::HALF_BUSY`).
    let scenario = |(name, o, floor, budget, judged): (String, &Outcome, Floor, Budget, bool)| {
        with_server(latency_row(name, o.all(), o, floor, budget, judged), o)
    };
    let get = |what: String| format!("2. get by id at {scale}, {what}");
    let search = |what: String| format!("2. search page (50 rows) at {scale}, {what}, mixed");
    rows.extend(
        [
            (
                get(half(m.get_half, m.get_load)),
                m.get_half,
                Floor::Open(m.get_half_floor),
                get_budget,
                true,
            ),
            (
                get("1 client".into()),
                m.get_one,
                Floor::One,
                get_budget,
                true,
            ),
            (
                get(paced(m.get_paced, m.get_load)),
                m.get_paced,
                Floor::Open(m.get_floor),
                get_budget,
                false,
            ),
            (
                get(format!(
                    "{c} clients, closed loop, machine {:.0}% busy",
                    busy(m.get_load)
                )),
                m.get_load,
                Floor::Closed,
                get_budget,
                false,
            ),
            (
                search(half(m.search_half, m.search_load)),
                m.search_half,
                Floor::Open(m.search_half_floor),
                search_budget,
                true,
            ),
            (
                search("1 client".into()),
                m.search_one,
                Floor::One,
                search_budget,
                true,
            ),
        ]
        .map(scenario),
    );
    // Under load every kind waits in the same queue; alone, each shows its own cost.
    for (k, what) in SEARCHES.iter().enumerate() {
        rows.push(latency_row(
            format!("   1 client, {what}"),
            m.search_one.kind(k),
            m.search_one,
            Floor::One,
            search_budget,
            true,
        ));
    }
    rows.extend(
        [
            (
                search(paced(m.search_paced, m.search_load)),
                m.search_paced,
                Floor::Open(m.search_floor),
                search_budget,
                false,
            ),
            (
                search(format!(
                    "{c} clients, closed loop, machine {:.0}% busy",
                    busy(m.search_load)
                )),
                m.search_load,
                Floor::Closed,
                search_budget,
                false,
            ),
        ]
        .map(scenario),
    );

    let mut r = Row::new(
        format!("3. verified Stripe webhook ingest, {c} clients"),
        format!(
            "{} · p50 {:.2} ms · p99 {:.2} ms",
            per_s(m.ingest.rate()),
            m.ingest.all().ms(50.0),
            m.ingest.all().ms(99.0)
        ),
    )
    .budget(
        m.ingest.rate(),
        "/s",
        Budget::AtLeast {
            must: 20_000.0,
            aim: Some(40_000.0),
        },
    );
    r.vs_http = Some(vs_http_rate(m.ingest.rate()));
    r.vs_fsync = Some(vs_fsync(m.ingest.rate()));
    r.vs_aead = Some(aead_rate(m.ingest.rate()));
    r.json = throughput(m.ingest);
    r.server_use(m.ingest);
    rows.push(r);

    let mut r = Row::new(
        format!("4. duplicate deliveries, {c} clients"),
        format!(
            "{} · p99 {:.2} ms",
            per_s(m.duplicate.rate()),
            m.duplicate.all().ms(99.0)
        ),
    );
    r.vs_http = Some(vs_http_rate(m.duplicate.rate()));
    r.vs_fsync = Some(vs_fsync(m.duplicate.rate()));
    r.vs_aead = Some(aead_rate(m.duplicate.rate()));
    r.json = throughput(m.duplicate);
    r.server_use(m.duplicate);
    rows.push(r);

    let memory = |name: String, mem: server::Memory, budget: Option<Budget>| {
        let mut r = Row::new(
            name,
            format!(
                "{:.1} MB (peak {:.1} MB)",
                mem.rss_mb(),
                mem.peak_kib as f64 / 1024.0
            ),
        );
        if let Some(b) = budget {
            r = r.budget(mem.rss_mb(), "MB", b);
        }
        r.json = json!({ "rss_kib": mem.rss_kib, "peak_kib": mem.peak_kib });
        r
    };
    let at_scale = Budget::AtMost {
        must: 80.0,
        aim: None,
    };
    rows.push(memory(
        "5. RSS idle, empty data".into(),
        s.idle_empty,
        Some(Budget::AtMost {
            must: 30.0,
            aim: Some(20.0),
        }),
    ));
    rows.push(memory(
        format!("5. RSS idle, {scale} credentials"),
        s.idle_seeded,
        Some(at_scale),
    ));
    rows.push(memory(
        format!("5. RSS after the gets of scenario 2, {scale} credentials"),
        s.after_gets,
        Some(at_scale),
    ));
    rows.push(memory(
        format!("5. RSS after scenario 2, {scale} credentials"),
        s.after_reads,
        Some(at_scale),
    ));
    rows.push(memory("5. RSS after scenarios 3-4".into(), s.at_end, None));
    let cold_budget = Budget::AtMost {
        must: 200.0,
        aim: Some(50.0),
    };
    for (name, (took, banner)) in [
        (
            "5. cold start to ready, empty data".to_string(),
            s.cold_empty,
        ),
        (
            format!("5. cold start to ready, {scale} credentials"),
            s.cold_seeded,
        ),
    ] {
        let ms = took.as_secs_f64() * 1000.0;
        let mut r = Row::new(
            name,
            format!(
                "{ms:.0} ms (in-process: {} ms)",
                banner.map_or("?".into(), |b| b.to_string())
            ),
        )
        .budget(ms, "ms", cold_budget);
        r.json = json!({ "spawn_to_ready_ms": ms, "banner_ready_in_ms": banner });
        rows.push(r);
    }

    let mut floor_rows = vec![
        Row::new(
            "floor: fsync (128-byte append + fdatasync)",
            per_s(floors.fsync_per_s),
        ),
        Row::new(
            "floor: AEAD open (XChaCha20-Poly1305, 40 bytes, one core)",
            per_s(floors.aead_per_s),
        ),
        Row::new(
            format!(
                "floor: pauses of a busy core ({} threads spinning on the clock)",
                floors.pauses.threads
            ),
            format!(
                "{:.1}/s over 1 ms per core · longest {:.2} ms · {:.2}% of arrivals would wait over {} ms",
                floors.pauses.per_core_s,
                floors.pauses.longest_ms,
                floors.pauses.late_share * 100.0,
                crate::floors::LATE.as_millis()
            ),
        ),
        Row::new(
            format!(
                "floor: memory (one thread: a read at a random place in {} MiB; a page fault of fresh memory; a 4 KiB read of a file just written)",
                crate::floors::MEMORY_SPAN >> 20
            ),
            format!(
                "read {:.0} ns · fault {:.0} ns ({} taken, huge pages {}) · file read {:.0} ns",
                floors.memory.random_read_ns,
                floors.memory.fault_ns,
                floors.memory.faults,
                floors.memory.huge_pages.as_deref().unwrap_or("?"),
                floors.memory.cached_pread_ns
            ),
        ),
        Row::new(
            format!("floor: empty axum handler, {c} clients"),
            format!(
                "{} · p50 {:.2} ms · p99 {:.2} ms · load generator {:.2} cores",
                per_s(floors.http_rate),
                floors.http_p50,
                floors.http_p99,
                floors.http_load_cores
            ),
        ),
        Row::new(
            "floor: empty axum handler, 1 client",
            format!(
                "p50 {:.3} ms · p99 {:.3} ms",
                floors.http1_p50, floors.http1_p99
            ),
        ),
    ];
    for (row, f) in [
        (GET_HALF_BUSY, m.get_half_floor),
        (SEARCH_HALF_BUSY, m.search_half_floor),
        (GET_HALF_RATE, m.get_floor),
        (SEARCH_HALF_RATE, m.search_floor),
    ] {
        floor_rows.push(Row::new(
            format!(
                "floor: empty axum handler, {c} connections, open loop at {} (the rate of {row})",
                per_s(f.rate)
            ),
            format!(
                "p50 {:.3} ms · p99 {:.3} ms · {}",
                f.p50,
                f.p99,
                f.stalls.text()
            ),
        ));
    }
    rows.append(&mut floor_rows);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_row_shown_beside_its_budget_has_no_verdict_and_says_where_it_stands() {
        let budget = Budget::AtMost {
            must: 2.0,
            aim: Some(1.0),
        };
        let judged = Row::new("get", "p99 3 ms").budget(3.0, "ms p99", budget);
        assert_eq!(judged.verdict(), Some("MISS"));
        assert_eq!(judged.result(), "MISS");
        let mut shown = judged.clone();
        shown.shown_only = true;
        assert_eq!(shown.verdict(), None);
        assert_eq!(shown.result(), NOT_JUDGED_OVER);
        let json = shown.to_json();
        assert_eq!(json["verdict"], Value::Null);
        assert_eq!(json["shown_not_judged"], true);
        assert_eq!(json["shown_within_budget"], false);
        assert_eq!(json["budget"], "≤ 2 ms p99 (aim 1)");
        let mut within = Row::new("get", "p99 1.5 ms").budget(1.5, "ms p99", budget);
        within.shown_only = true;
        assert_eq!(within.result(), NOT_JUDGED_WITHIN);
        assert_eq!(Row::new("floor", "1/s").result(), "—");
    }

    /// An outcome of one second at `rate` (open loop at `offered`), every
    /// request taking `ms`, with the machine `busy`.
    fn outcome(rate: usize, offered: Option<f64>, ms: u32, busy: f64) -> Outcome {
        Outcome {
            elapsed: Duration::from_secs(1),
            clients: 64,
            offered,
            issued: rate as u64,
            sent: rate as u64,
            latencies: vec![vec![ms * 1000; rate / 4]; 4],
            held: Vec::new(),
            slow: Vec::new(),
            server: None,
            machine_busy: Some(busy),
        }
    }

    #[test]
    fn the_latency_budgets_are_judged_on_the_half_busy_and_one_client_rows_only() {
        let run = crate::Args::try_parse_from(["bench"])
            .expect("defaults")
            .run;
        let floors = Floors {
            fsync_per_s: 5_000.0,
            aead_per_s: 700_000.0,
            http_rate: 190_000.0,
            http_load_cores: 0.9,
            http_p50: 0.3,
            http_p99: 0.7,
            http1_p50: 0.06,
            http1_p99: 0.09,
            pauses: crate::floors::Pauses {
                threads: 2,
                per_core_s: 1.0,
                longest_ms: 4.0,
                late_share: 0.002,
            },
            memory: crate::floors::Memory {
                random_read_ns: 200.0,
                fault_ns: 1_300.0,
                faults: 65_536,
                huge_pages: None,
                cached_pread_ns: 300.0,
            },
        };
        let open = |rate| OpenFloor {
            rate,
            p50: 0.1,
            p99: 0.4,
            stalls: Default::default(),
        };
        // Every loaded row misses its budget (3 ms gets, 30 ms searches) but
        // the half-busy and one-client ones (1 ms and 5 ms).
        let (create, ingest) = (outcome(8_000, None, 10, 1.0), outcome(40_000, None, 3, 1.0));
        let get_load = outcome(40_000, None, 3, 1.0);
        let get_paced = outcome(20_000, Some(20_000.0), 3, 0.8);
        let get_half = outcome(12_000, Some(12_000.0), 1, 0.5);
        let get_one = outcome(10_000, None, 1, 0.5);
        let search_load = outcome(2_000, None, 30, 1.0);
        let search_paced = outcome(1_000, Some(1_000.0), 30, 0.55);
        let search_half = outcome(900, Some(900.0), 5, 0.5);
        let search_one = outcome(800, None, 5, 0.5);
        let memory = server::Memory {
            rss_kib: 20_000,
            peak_kib: 20_000,
        };
        let rows = rows(
            &run,
            2,
            &floors,
            Measured {
                create: &create,
                get_load: &get_load,
                get_paced: &get_paced,
                get_half: &get_half,
                get_one: &get_one,
                search_load: &search_load,
                search_paced: &search_paced,
                search_half: &search_half,
                search_one: &search_one,
                get_floor: open(20_000.0),
                search_floor: open(1_000.0),
                get_half_floor: open(12_000.0),
                search_half_floor: open(900.0),
                ingest: &ingest,
                duplicate: &ingest,
            },
            Starts {
                cold_empty: (Duration::from_millis(30), Some(20)),
                cold_seeded: (Duration::from_millis(30), Some(20)),
                idle_empty: memory,
                idle_seeded: memory,
                after_gets: memory,
                after_reads: memory,
                at_end: memory,
            },
        );
        let latency: Vec<&Row> = rows
            .iter()
            .filter(|r| r.judged.is_some_and(|(_, unit, _)| unit == "ms p99"))
            .collect();
        assert_eq!(latency.len(), 12, "4 get rows, 4 search rows, 4 kinds");
        for r in &latency {
            let judged = r.scenario.contains("(target 50%)") || r.scenario.contains("1 client");
            assert_eq!(!r.shown_only, judged, "{}", r.scenario);
            if judged {
                assert_eq!(r.verdict(), Some("pass (aim met)"), "{}", r.scenario);
            } else {
                assert_eq!(r.result(), NOT_JUDGED_OVER, "{}", r.scenario);
            }
        }
        let shown: Vec<&str> = latency
            .iter()
            .filter(|r| r.shown_only)
            .map(|r| r.scenario.as_str())
            .collect();
        assert_eq!(shown.len(), 4, "{shown:?}");
        assert_eq!(
            shown
                .iter()
                .filter(|s| s.contains("clients, closed loop"))
                .count(),
            2,
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .filter(|s| s.contains("(50% of the closed loop"))
                .count()
                == 2
        );
        let half = latency[0];
        assert!(
            half.scenario
                .contains("12,000/s (30% of the closed loop's rate), machine 50% busy"),
            "{}",
            half.scenario
        );
        assert_eq!(half.json["machine_busy"], 0.5);
        // No verdict in the table is a MISS.
        assert!(rows.iter().all(|r| r.verdict() != Some("MISS")));
    }
}
