//! `page`: latency of one page of history before a cursor, in a warm room.

use std::ops::Bound;

use anyhow::Result;
use concord_core::Anchor;
use rand::Rng;

use super::report::{thousands, Goal, Metric, Report, Unit};
use super::stats::{column, quantile, runs, time_each};
use super::stores::{newest, same_count, ConcordRoom, RawSled, GROUP};
use super::workload::{busy_span, rng, KeyLayout, Stream, Workload, DAY_MILLIS};
use super::{Ctx, Rooms};

/// Messages per page.
const PAGE: usize = 50;

/// Workload: a room of `page_room` messages over several days of clock time
/// (4,000 per day, so one bucket per 4,000), posted 100 per commit; then
/// `page_cursors` seeded random messages, and from each a page of 50 before
/// it, after one untimed pass over the same cursors.
/// Baseline: raw sled, one tree keyed `time ‖ author ‖ id` with the body as
/// value: `range(..key).rev().take(50)`.
/// Goal: Concord's p99 is at most 2x raw sled's.
pub fn run(ctx: &Ctx) -> Result<Report> {
    run_in(ctx, Rooms::Unencrypted)
}

/// `page-e2ee`: the same in an end-to-end encrypted room, against raw sled
/// holding what an encrypting device stores (`crypto.rs`) and opening each
/// body's seal as it reads the page.
pub fn run_e2ee(ctx: &Ctx) -> Result<Report> {
    run_in(ctx, Rooms::Encrypted)
}

fn run_in(ctx: &Ctx, rooms: Rooms) -> Result<Report> {
    let encrypted = rooms == Rooms::Encrypted;
    let n = ctx.sizes.page_room;
    let w = Workload::generate(ctx.seed, n, busy_span(n));
    let mut concord = ConcordRoom::create_in(&w, rooms)?;
    concord.post(&w.messages, GROUP)?;
    let raw = RawSled::create_for(rooms, ctx.seed)?;
    raw.append(&w, &w.messages, KeyLayout::TimeFirst, GROUP)?;
    let cursors = concord.cursors()?;
    same_count("whole room", cursors.len(), raw.tree.len())?;
    let keys: Vec<Vec<u8>> = w.messages.iter().map(|m| w.key(KeyLayout::TimeFirst, m)).collect();

    let mut choices = rng(ctx.seed, Stream::Choices);
    let picks: Vec<usize> =
        (0..ctx.sizes.page_cursors).map(|_| choices.random_range(0..n)).collect();
    let concord_page = |i: usize| -> Result<usize> {
        Ok(concord.replica.page(&concord.room, Anchor::Before(cursors[i]), PAGE)?.messages.len())
    };
    let raw_page = |i: usize| -> Result<usize> {
        let page = newest(&raw.tree, Bound::Excluded(&keys[i]), PAGE)?;
        if encrypted {
            for (k, v) in &page {
                std::hint::black_box(raw.body(k, v)?);
            }
        }
        Ok(page.len())
    };
    // Warm both and check that they page over the same messages.
    for &i in &picks {
        same_count("page", concord_page(i)?, raw_page(i)?)?;
    }

    let name = rooms.name("page", "page-e2ee");
    let baseline_name = if encrypted { "raw sled + the same cryptography" } else { "raw sled" };
    let rows = runs(name, ctx.runs, || {
        let c = time_each(&picks, |i| concord_page(i).map(drop))?;
        let r = time_each(&picks, |i| raw_page(i).map(drop))?;
        Ok([quantile(&c, 0.5), quantile(&r, 0.5), quantile(&c, 0.99), quantile(&r, 0.99)])
    })?;
    let p50 = Metric::compared("p50 per page", Unit::Micros, &column(&rows, 0), &column(&rows, 1));
    let p99 = Metric::compared("p99 per page", Unit::Micros, &column(&rows, 2), &column(&rows, 3));
    let ratio = p99.ratio().unwrap_or(f64::INFINITY);
    Ok(Report {
        name,
        workload: format!(
            "a warm {}room of {} messages spanning {:.1} days of clock time (4,000 per \
             day, one bucket per day), posted {GROUP} per commit; {} seeded random \
             cursors, a page of {PAGE} before each (p50 and p99 over the calls of one run)",
            if encrypted { "end-to-end encrypted " } else { "" },
            thousands(n as f64),
            busy_span(n) as f64 / DAY_MILLIS as f64,
            thousands(picks.len() as f64)
        ),
        baseline_name,
        baseline: if encrypted {
            format!(
                "one tree keyed time ‖ author ‖ id, the value an encrypting device stores \
                 (Megolm ciphertext, signature, the body sealed with XChaCha20-Poly1305); \
                 range(..key).rev().take({PAGE}), each body's seal opened"
            )
        } else {
            format!(
                "one tree keyed time ‖ author ‖ id, value the body; \
                 range(..key).rev().take({PAGE})"
            )
        },
        metrics: vec![p50, p99],
        goals: vec![Goal::new(
            format!("p99 at most 2x {baseline_name}"),
            format!("{ratio:.2}x"),
            ratio <= 2.0,
        )],
    })
}
