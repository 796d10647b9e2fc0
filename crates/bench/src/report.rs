//! The result table: each scenario's figure, its budget from DESIGN.md §6,
//! whether it is met, and its ratios to the floors measured in the same run.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use serde_json::{json, Value};

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

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub figure: String,
    /// The value the budget is judged on, its unit, and the budget.
    pub judged: Option<(f64, &'static str, Budget)>,
    pub vs_http: Option<String>,
    pub vs_fsync: Option<String>,
    pub vs_aead: Option<String>,
    pub json: Value,
}

impl Row {
    pub fn new(scenario: impl Into<String>, figure: impl Into<String>) -> Row {
        Row {
            scenario: scenario.into(),
            figure: figure.into(),
            judged: None,
            vs_http: None,
            vs_fsync: None,
            vs_aead: None,
            json: Value::Null,
        }
    }

    pub fn budget(mut self, value: f64, unit: &'static str, budget: Budget) -> Row {
        self.judged = Some((value, unit, budget));
        self
    }

    pub fn verdict(&self) -> Option<&'static str> {
        self.judged.map(|(v, _, b)| b.verdict(v))
    }

    pub fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "figure": self.figure,
            "budget": self.judged.map(|(_, unit, b)| b.text(unit)),
            "judged_value": self.judged.map(|(v, _, _)| v),
            "verdict": self.verdict(),
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
            Cell::new(r.verdict().unwrap_or("—")),
            Cell::new(r.vs_http.clone().unwrap_or_else(dash)).set_alignment(CellAlignment::Right),
            Cell::new(r.vs_fsync.clone().unwrap_or_else(dash)).set_alignment(CellAlignment::Right),
            Cell::new(r.vs_aead.clone().unwrap_or_else(dash)).set_alignment(CellAlignment::Right),
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
