//! A benchmark's result and its markdown rendering: one table row per metric
//! (Concord median and spread, baseline median and spread, their ratio) and
//! a line per goal saying whether it was met.

use super::stats::Spread;

/// How a metric's values are shown.
#[derive(Clone, Copy)]
pub enum Unit {
    /// Messages per second.
    PerSecond,
    /// Envelopes per second.
    EnvelopesPerSecond,
    /// Microseconds, from seconds.
    Micros,
    /// Milliseconds, from seconds.
    Millis,
    /// Bytes.
    Bytes,
    /// A plain ratio.
    Ratio,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::PerSecond => format!("{} msg/s", thousands(v)),
            Unit::EnvelopesPerSecond => format!("{} env/s", thousands(v)),
            Unit::Micros => format!("{:.1} µs", v * 1e6),
            Unit::Millis => format!("{:.2} ms", v * 1e3),
            Unit::Bytes if v.abs() < 10.0 * 1024.0 => format!("{} B", thousands(v)),
            Unit::Bytes if v.abs() < 1024.0 * 1024.0 => format!("{:.1} KiB", v / 1024.0),
            Unit::Bytes => format!("{:.1} MiB", v / (1024.0 * 1024.0)),
            Unit::Ratio => format!("{v:.2}x"),
        }
    }
}

/// `v` rounded, with thousands separators.
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// One measured quantity: a sample per run for Concord and, when it has a
/// counterpart, for the baseline.
pub struct Metric {
    name: String,
    unit: Unit,
    concord: Spread,
    baseline: Option<Spread>,
    /// Whether Concord / baseline means something for this row.
    compare: bool,
}

impl Metric {
    /// A quantity measured for both; the table shows Concord / baseline.
    pub fn compared(
        name: impl Into<String>,
        unit: Unit,
        concord: &[f64],
        baseline: &[f64],
    ) -> Self {
        Self {
            name: name.into(),
            unit,
            concord: Spread::of(concord),
            baseline: Some(Spread::of(baseline)),
            compare: true,
        }
    }

    /// A quantity shown side by side without a Concord / baseline ratio
    /// (for example a ratio between two room sizes).
    pub fn side_by_side(
        name: impl Into<String>,
        unit: Unit,
        concord: &[f64],
        baseline: &[f64],
    ) -> Self {
        Self { compare: false, ..Self::compared(name, unit, concord, baseline) }
    }

    /// A quantity measured for Concord only.
    pub fn alone(name: impl Into<String>, unit: Unit, concord: &[f64]) -> Self {
        Self {
            name: name.into(),
            unit,
            concord: Spread::of(concord),
            baseline: None,
            compare: false,
        }
    }

    /// The median Concord value.
    pub fn concord(&self) -> f64 {
        self.concord.median
    }

    /// Concord median / baseline median.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.map(|b| self.concord.median / b.median)
    }

    fn cells(&self, s: Spread) -> [String; 2] {
        [self.unit.show(s.median), format!("{} – {}", self.unit.show(s.min), self.unit.show(s.max))]
    }
}

/// A stated goal and whether the medians meet it.
pub struct Goal {
    text: String,
    measured: String,
    met: bool,
}

impl Goal {
    pub fn new(text: impl Into<String>, measured: impl Into<String>, met: bool) -> Self {
        Self { text: text.into(), measured: measured.into(), met }
    }
}

/// A benchmark's outcome.
pub struct Report {
    pub name: &'static str,
    pub workload: String,
    pub baseline_name: &'static str,
    pub baseline: String,
    pub metrics: Vec<Metric>,
    pub goals: Vec<Goal>,
}

impl Report {
    /// The report as markdown.
    pub fn markdown(&self, seed: u64, runs: usize) -> String {
        let b = self.baseline_name;
        let mut out = format!("### `{}` (seed {seed}, {runs} runs)\n\n", self.name);
        out += &format!("Workload: {}\n\nBaseline ({b}): {}\n\n", self.workload, self.baseline);
        out += &format!(
            "| metric | Concord | Concord min – max | {b} | {b} min – max | Concord / {b} |\n"
        );
        out += "|---|--:|--:|--:|--:|--:|\n";
        for m in &self.metrics {
            let [cm, cs] = m.cells(m.concord);
            let [bm, bs] = m.baseline.map_or_else(|| ["–".into(), "–".into()], |s| m.cells(s));
            let ratio = match m.ratio() {
                Some(r) if m.compare && r.is_finite() => Unit::Ratio.show(r),
                _ => "–".into(),
            };
            out += &format!("| {} | {cm} | {cs} | {bm} | {bs} | {ratio} |\n", m.name);
        }
        out += "\n";
        for g in &self.goals {
            let verdict = if g.met { "met" } else { "missed" };
            out += &format!("Goal: {}: **{verdict}** ({}).\n", g.text, g.measured);
        }
        out
    }
}
