//! `cold-open`: opening a store and showing the newest page, for a small and
//! a large room: time and memory should not depend on the room's size.
//!
//! The stores are built in this process; each open is measured in a fresh
//! child process (this binary with [`PROBE_FLAG`]), so its heap count and
//! resident set hold nothing of the build and nothing of earlier opens. The
//! operating system's file cache stays warm, as after an app restart.

use std::ops::Bound;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use concord_core::{Anchor, ManualClock, Replica};
use tempfile::TempDir;

use super::alloc;
use super::report::{thousands, Goal, Metric, Report, Unit};
use super::stats::{runs, timed};
use super::stores::{newest, open_raw, open_store, ConcordRoom, RawSled};
use super::workload::{busy_span, KeyLayout, Workload, START_MILLIS};
use super::Ctx;

/// The hidden flag that makes this binary a probe: `PROBE_FLAG KIND PATH`.
pub const PROBE_FLAG: &str = "--probe-open";

/// Messages per page.
const PAGE: usize = 50;
/// Messages per commit while building the rooms.
const BUILD_GROUP: usize = 1_000;
/// What "independent of room size" allows: large/small at most this.
const GROWTH_GOAL: f64 = 1.5;

/// The two systems, in the order of a [`Probe`] pair.
const KINDS: [&str; 2] = ["concord", "raw"];

/// What one probe measured: open and first page (seconds), the heap bytes
/// they left live, and the process's VmRSS after them.
#[derive(Clone, Copy)]
struct Probe {
    secs: f64,
    heap: f64,
    rss: f64,
}

/// The probes of one run: `[small, large][concord, raw]`.
type Run = [[Probe; 2]; 2];

/// A quantity every probe measures.
struct Quantity {
    what: &'static str,
    unit: Unit,
    of: fn(&Probe) -> f64,
    /// Whether "independent of room size" is a goal for it. VmRSS is shown
    /// beside the heap, not judged: it also counts the binary's own pages.
    has_goal: bool,
}

const QUANTITIES: [Quantity; 3] = [
    Quantity { what: "open + first page", unit: Unit::Millis, of: |p| p.secs, has_goal: true },
    Quantity { what: "heap after first page", unit: Unit::Bytes, of: |p| p.heap, has_goal: true },
    Quantity { what: "VmRSS after first page", unit: Unit::Bytes, of: |p| p.rss, has_goal: false },
];

/// One room, built both ways and closed.
struct Built {
    messages: usize,
    dirs: [TempDir; 2],
    build_secs: f64,
}

/// Workload: a room of `cold_small` and one of `cold_large` messages (4,000
/// per day of clock time), posted 1,000 per commit and closed. Then, per run
/// and room, in a fresh process: `SledStore::open`, `Replica::open` and the
/// first `page(Anchor::Latest, 50)`, timed; live heap bytes (counting
/// allocator) and VmRSS after that page.
/// Baseline: raw sled holding the same messages keyed `time ‖ author ‖ id`:
/// open and read the last 50 entries.
/// Goal: independent of room size: large/small at most 1.5x, for time and
/// for heap.
pub fn run(ctx: &Ctx) -> Result<Report> {
    let rooms = [build(ctx.seed, ctx.sizes.cold_small)?, build(ctx.seed, ctx.sizes.cold_large)?];
    let probes: Vec<Run> = runs("cold-open", ctx.runs, || {
        let probe_room = |room: &Built| -> Result<[Probe; 2]> {
            Ok([
                spawn_probe(KINDS[0], room.dirs[0].path(), room.messages)?,
                spawn_probe(KINDS[1], room.dirs[1].path(), room.messages)?,
            ])
        };
        Ok([probe_room(&rooms[0])?, probe_room(&rooms[1])?])
    })?;
    // One value per run, for Concord (kind 0) or the baseline (kind 1).
    let series = |f: &dyn Fn(&Run, usize) -> f64, kind: usize| -> Vec<f64> {
        probes.iter().map(|p| f(p, kind)).collect()
    };
    let mut metrics = Vec::new();
    let mut goals = Vec::new();
    for q in QUANTITIES {
        for (r, room) in rooms.iter().enumerate() {
            let at = |p: &Run, k: usize| (q.of)(&p[r][k]);
            metrics.push(Metric::compared(
                format!("{}, {} messages", q.what, thousands(room.messages as f64)),
                q.unit,
                &series(&at, 0),
                &series(&at, 1),
            ));
        }
        let growth = |p: &Run, k: usize| (q.of)(&p[1][k]) / (q.of)(&p[0][k]);
        let growth = Metric::side_by_side(
            format!("{}: large / small", q.what),
            Unit::Ratio,
            &series(&growth, 0),
            &series(&growth, 1),
        );
        if q.has_goal {
            let g = growth.concord();
            goals.push(Goal::new(
                format!("{}, large/small at most {GROWTH_GOAL}x", q.what),
                format!("{g:.2}x"),
                g <= GROWTH_GOAL,
            ));
        }
        metrics.push(growth);
    }
    Ok(Report {
        name: "cold-open",
        workload: format!(
            "rooms of {} and {} messages (4,000 per day of clock time), built {} \
             per commit (the Concord builds took {:.1} s and {:.1} s) and closed; each run \
             opens each store in a fresh process, file cache warm: SledStore::open, \
             Replica::open, page(Anchor::Latest, {PAGE}); heap is the live bytes that \
             the open and the page left allocated",
            thousands(rooms[0].messages as f64),
            thousands(rooms[1].messages as f64),
            thousands(BUILD_GROUP as f64),
            rooms[0].build_secs,
            rooms[1].build_secs
        ),
        baseline_name: "raw sled",
        baseline: format!(
            "the same messages in one tree keyed time ‖ author ‖ id: open, read the last {PAGE}"
        ),
        metrics,
        goals,
    })
}

/// Builds a room of `n` messages both ways and closes both stores.
fn build(seed: u64, n: usize) -> Result<Built> {
    eprintln!("cold-open: building a room of {n} messages");
    let w = Workload::generate(seed, n, busy_span(n));
    let (concord, build_secs) = timed(|| {
        let mut room = ConcordRoom::create(&w)?;
        room.post(&w.messages, BUILD_GROUP)?;
        Ok(room.close())
    })?;
    let raw = RawSled::create()?;
    raw.append(&w, &w.messages, KeyLayout::TimeFirst, BUILD_GROUP)?;
    Ok(Built { messages: n, dirs: [concord, raw.close()], build_secs })
}

/// Runs this binary as a probe of `kind` on `path` and reads what it measured.
fn spawn_probe(kind: &str, path: &Path, messages: usize) -> Result<Probe> {
    let out =
        Command::new(std::env::current_exe()?).arg(PROBE_FLAG).arg(kind).arg(path).output()?;
    if !out.status.success() {
        bail!("probe {kind} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let fields: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("probe output")?;
    let [secs, heap, rss, count] = fields[..] else { bail!("probe output {text:?}") };
    ensure!(count as usize == PAGE.min(messages), "probe {kind} paged {count} messages");
    Ok(Probe { secs, heap, rss })
}

/// The probe itself: opens the store at `path` as `kind`, reads the newest
/// page and prints `seconds heap_bytes rss_bytes messages`.
pub fn probe(kind: &str, path: &Path) -> Result<()> {
    match kind {
        "concord" => measure_open(|| {
            let store = open_store(path)?;
            let replica = Replica::open(store, Arc::new(ManualClock::new(START_MILLIS)))?;
            let room = replica.rooms().first().map(|r| r.id).context("no room")?;
            let page = replica.page(&room, Anchor::Latest, PAGE)?;
            let count = page.messages.len();
            Ok(((replica, page), count))
        }),
        "raw" => measure_open(|| {
            let (db, tree) = open_raw(path)?;
            let page = newest(&tree, Bound::Unbounded, PAGE)?;
            let count = page.len();
            Ok(((db, tree, page), count))
        }),
        other => bail!("unknown probe kind {other:?}"),
    }
}

/// Times `open`, which returns what it holds and how many messages it paged,
/// and prints the probe line while that is still alive.
fn measure_open<T>(open: impl FnOnce() -> Result<(T, usize)>) -> Result<()> {
    let (((held, count), secs), heap, _) = alloc::held_by(|| timed(open))?;
    let rss = alloc::vm_rss()?;
    println!("{secs} {heap} {rss} {count}");
    drop(held);
    Ok(())
}
