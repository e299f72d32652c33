//! `append`: durable append throughput.

use anyhow::Result;

use super::report::{thousands, Goal, Metric, Report, Unit};
use super::stats::{column, runs, timed};
use super::stores::{ConcordRoom, RawSled, GROUP};
use super::workload::{busy_span, KeyLayout, Workload};
use super::Ctx;

/// Workload: `append_group` messages (bodies of 20 to 200 bytes, 4,000 per
/// day of clock time) into one room, 100 per commit; and the first
/// `append_single` of them one per commit (`post`, a flush each).
/// Baseline: raw sled, key `id ‖ author ‖ time`, value the body, with the
/// same policy: insert and flush per message; a 100-entry batch and a flush.
/// Goal: group commit reaches at least 0.8x raw sled's messages per second.
pub fn run(ctx: &Ctx) -> Result<Report> {
    let w = Workload::generate(ctx.seed, ctx.sizes.append_group, busy_span(ctx.sizes.append_group));
    let single = &w.messages[..ctx.sizes.append_single.min(w.messages.len())];
    let rate = |n: usize, secs: f64| n as f64 / secs;
    let rows = runs("append", ctx.runs, || {
        let mut concord = ConcordRoom::create(&w)?;
        let (_, c_single) = timed(|| concord.post(single, 1))?;
        let raw = RawSled::create()?;
        let (_, r_single) = timed(|| raw.append(&w, single, KeyLayout::IdFirst, 1))?;
        let mut concord = ConcordRoom::create(&w)?;
        let (_, c_group) = timed(|| concord.post(&w.messages, GROUP))?;
        let raw = RawSled::create()?;
        let (_, r_group) = timed(|| raw.append(&w, &w.messages, KeyLayout::IdFirst, GROUP))?;
        Ok([
            rate(single.len(), c_single),
            rate(single.len(), r_single),
            rate(w.messages.len(), c_group),
            rate(w.messages.len(), r_group),
        ])
    })?;
    let per_commit = Metric::compared(
        format!("one message per commit ({} messages)", thousands(single.len() as f64)),
        Unit::PerSecond,
        &column(&rows, 0),
        &column(&rows, 1),
    );
    let grouped = Metric::compared(
        format!("group commit of {GROUP} ({} messages)", thousands(w.messages.len() as f64)),
        Unit::PerSecond,
        &column(&rows, 2),
        &column(&rows, 3),
    );
    let ratio = grouped.ratio().unwrap_or(0.0);
    Ok(Report {
        name: "append",
        workload: format!(
            "{} messages of 20–200 bytes into one room, 4,000 per day of clock time; \
             one per commit for the first {}, then all of them {GROUP} per commit \
             (a fresh store for each)",
            thousands(w.messages.len() as f64),
            thousands(single.len() as f64)
        ),
        baseline_name: "raw sled",
        baseline: "one tree, key id ‖ author ‖ time, value the body; flush after each \
                   message, or one 100-entry batch and a flush"
            .into(),
        metrics: vec![per_commit, grouped],
        goals: vec![Goal::new(
            "group commit at least 0.8x raw sled",
            format!("{ratio:.2}x"),
            ratio >= 0.8,
        )],
    })
}
