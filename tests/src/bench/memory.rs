//! `memory`: heap bytes per message held by a hot bucket.

use anyhow::Result;
use concord_core::Draft;
use yrs::{Any, Doc, Map, Transact};

use super::alloc::held_by;
use super::report::{thousands, Goal, Metric, Report, Unit};
use super::stats::{column, runs};
use super::stores::{ConcordRoom, GROUP};
use super::workload::{Workload, DAY_MILLIS, METADATA_BYTES};
use super::Ctx;

/// Goal for live heap bytes per message.
const GOAL_BYTES: f64 = 1024.0;

/// Workload: `memory` messages within half a day of clock time (one bucket),
/// posted 100 per commit into an open replica; the heap bytes left live by
/// the posts (counting allocator, replica still open), per message. This
/// includes the in-memory author document and sled's page cache.
/// Baseline: raw yrs, one `Doc` with one map, one transaction per message:
/// key the message id in hex, value `Any::Buffer` of 60 bytes of metadata
/// and the body.
/// Goal: at most 1 KiB per message.
pub fn run(ctx: &Ctx) -> Result<Report> {
    let n = ctx.sizes.memory;
    let w = Workload::generate(ctx.seed, n, DAY_MILLIS / 2);
    let per = |bytes: f64| bytes / n as f64;
    let rows = runs("memory", ctx.runs, || {
        let mut concord = ConcordRoom::create(&w)?;
        // One post into another room first, so that what the first commit
        // allocates once (sled's write buffers, caches) is not counted.
        let other =
            concord.replica.create_room_opts("warm-up", &super::Rooms::Unencrypted.options())?;
        concord.replica.post(&other, Draft::text("warm-up"))?;
        let (_, c_live, c_peak) = held_by(|| concord.post(&w.messages, GROUP).map(drop))?;
        // What the replica's author document holds: the heap freed when the
        // document cache drops it (a post into the other room evicts it).
        let (_, freed, _) = held_by(|| {
            concord.replica.set_doc_cache(1);
            concord.replica.post(&other, Draft::text("evict")).map(drop).map_err(Into::into)
        })?;
        drop(concord);
        let (doc, y_live, y_peak) = held_by(|| {
            let doc = Doc::new();
            let map = doc.get_or_insert_map("messages");
            for m in &w.messages {
                let mut txn = doc.transact_mut();
                map.insert(&mut txn, hex::encode(m.id), Any::Buffer(w.record(m).into()));
            }
            Ok(doc)
        })?;
        drop(doc);
        Ok([per(c_live), per(y_live), per(c_peak), per(y_peak), per(-freed)])
    })?;
    let live = Metric::compared(
        "live heap per message, after the posts",
        Unit::Bytes,
        &column(&rows, 0),
        &column(&rows, 1),
    );
    let peak = Metric::compared(
        "peak heap per message, during the posts",
        Unit::Bytes,
        &column(&rows, 2),
        &column(&rows, 3),
    );
    let document = Metric::compared(
        "held by the author document (freed by evicting it)",
        Unit::Bytes,
        &column(&rows, 4),
        &column(&rows, 1),
    );
    let bytes = live.concord();
    Ok(Report {
        name: "memory",
        workload: format!(
            "{} messages of 20–200 bytes within half a day of clock time (one bucket), \
             posted {GROUP} per commit into an open replica on sled; heap bytes left live \
             by the posts with the replica still open (its author document and sled's \
             page cache included), divided by {}",
            thousands(n as f64),
            thousands(n as f64)
        ),
        baseline_name: "raw yrs",
        baseline: format!(
            "one Doc with one map, one transaction per message: key the message id in \
             hex, value Any::Buffer of {METADATA_BYTES} bytes of metadata and the body"
        ),
        metrics: vec![live, peak, document],
        goals: vec![Goal::new(
            "at most 1 KiB of live heap per message",
            format!("{bytes:.0} B"),
            bytes <= GOAL_BYTES,
        )],
    })
}
