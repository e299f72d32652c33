//! `disk`: bytes on disk per live message and per tombstone.

use anyhow::Result;

use super::report::{thousands, Goal, Metric, Report, Unit};
use super::stats::runs;
use super::stores::{settle, ConcordRoom, RawSled, GROUP};
use super::workload::{busy_span, KeyLayout, Workload};
use super::Ctx;

/// Goals: Concord / raw for live messages, and bytes per tombstone.
const LIVE_RATIO_GOAL: f64 = 1.5;
const TOMBSTONE_GOAL: f64 = 256.0;

/// Workload: `disk` messages (4,000 per day of clock time) posted 100 per
/// commit; the store is closed, reopened and closed again (sled's recovery
/// may reclaim log segments) and its directory measured; then every message
/// is deleted, 100 per commit, and the directory measured the same way.
/// Bytes per live message is the first size / M, bytes per tombstone the
/// second size / M; both for the files and for the keys and values the
/// trees hold (what sled's log and pages add is the difference).
/// Baseline: raw sled holding `id ‖ author ‖ time → body` for the same
/// messages, inserted and removed in flushed batches of 100, measured alike.
/// Goals: live messages at most 1.5x raw sled; at most 256 bytes per tombstone.
pub fn run(ctx: &Ctx) -> Result<Report> {
    let n = ctx.sizes.disk;
    let w = Workload::generate(ctx.seed, n, busy_span(n));
    let end = w.messages.last().map_or(0, |m| m.at + 1);
    let per = |bytes: u64| bytes as f64 / n as f64;
    let rows = runs("disk", ctx.runs, || {
        let mut concord = ConcordRoom::create(&w)?;
        let ids = concord.post(&w.messages, GROUP)?;
        let dir = concord.close();
        let c_live = settle(dir.path())?;
        let mut concord = ConcordRoom::reopen(&w, dir)?;
        concord.delete(&ids, end, GROUP)?;
        let c_dead = settle(concord.close().path())?;

        let raw = RawSled::create()?;
        raw.append(&w, &w.messages, KeyLayout::IdFirst, GROUP)?;
        let dir = raw.close();
        let r_live = settle(dir.path())?;
        let raw = RawSled::reopen(dir)?;
        raw.remove(&w, &w.messages, KeyLayout::IdFirst, GROUP)?;
        let r_dead = settle(raw.close().path())?;
        Ok([c_live, r_live, c_dead, r_dead].map(|s| [per(s.files), per(s.entries)]))
    })?;
    let metric = |name: &str, phase: usize, field: usize| {
        let series = |k: usize| -> Vec<f64> { rows.iter().map(|r| r[phase + k][field]).collect() };
        Metric::compared(name, Unit::Bytes, &series(0), &series(1))
    };
    // The goals judge the files (rows 1 and 3).
    let metrics = vec![
        metric("key + value bytes per live message", 0, 1),
        metric("file bytes per live message", 0, 0),
        metric("key + value bytes per tombstone (all deleted)", 2, 1),
        metric("file bytes per tombstone (all deleted)", 2, 0),
    ];
    let ratio = metrics[1].ratio().unwrap_or(f64::INFINITY);
    let tombstone = metrics[3].concord();
    Ok(Report {
        name: "disk",
        workload: format!(
            "{} messages of 20–200 bytes (4,000 per day of clock time) posted {GROUP} per \
             commit, then all deleted {GROUP} per commit; after each phase the store is \
             closed, reopened (its keys and values summed), closed, and the sizes of the \
             files in its directory summed; both divided by {}",
            thousands(n as f64),
            thousands(n as f64)
        ),
        baseline_name: "raw sled",
        baseline: format!(
            "one tree, id ‖ author ‖ time → body, inserted and then removed in flushed \
             batches of {GROUP}, measured the same way"
        ),
        metrics,
        goals: vec![
            Goal::new(
                format!("live messages at most {LIVE_RATIO_GOAL}x raw sled"),
                format!("{ratio:.2}x"),
                ratio <= LIVE_RATIO_GOAL,
            ),
            Goal::new(
                format!("at most {TOMBSTONE_GOAL} bytes per tombstone"),
                format!("{tombstone:.0} B"),
                tombstone <= TOMBSTONE_GOAL,
            ),
        ],
    })
}
