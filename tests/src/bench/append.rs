//! `append`: durable append throughput, in unencrypted and in encrypted
//! rooms (`append-e2ee`).

use anyhow::Result;

use super::crypto::Sender;
use super::report::{thousands, Goal, Metric, Report, Unit};
use super::stats::{column, runs, timed};
use super::stores::{ConcordRoom, RawSled, GROUP};
use super::workload::{busy_span, KeyLayout, Workload};
use super::{Ctx, Rooms};

/// Workload: `append_group` messages (bodies of 20 to 200 bytes, 4,000 per
/// day of clock time) into one room, 100 per commit; and the first
/// `append_single` of them one per commit (`post`, a flush each).
/// Baseline: raw sled, key `id ‖ author ‖ time`, value the body, with the
/// same policy: insert and flush per message; a 100-entry batch and a flush.
/// Goal: group commit reaches at least 0.8x raw sled's messages per second.
pub fn run(ctx: &Ctx) -> Result<Report> {
    run_in(ctx, Rooms::Unencrypted)
}

/// `append-e2ee`: the same in an end-to-end encrypted room, against raw
/// sled doing an encrypting device's work per message (`crypto.rs`:
/// Megolm-encrypt, Ed25519-sign, seal at rest; the value stored is the
/// ciphertext and the sealed body). The cost of encryption itself is
/// reported beside it: Concord's encrypted room against an unencrypted one
/// (rate and bytes per delivery), and the baseline's cryptography alone.
pub fn run_e2ee(ctx: &Ctx) -> Result<Report> {
    run_in(ctx, Rooms::Encrypted)
}

fn run_in(ctx: &Ctx, rooms: Rooms) -> Result<Report> {
    let w = Workload::generate(ctx.seed, ctx.sizes.append_group, busy_span(ctx.sizes.append_group));
    let single = &w.messages[..ctx.sizes.append_single.min(w.messages.len())];
    let rate = |n: usize, secs: f64| n as f64 / secs;
    let per_message = |bytes: usize| bytes as f64 / w.messages.len() as f64;
    let encrypted = rooms == Rooms::Encrypted;
    let rows = runs(rooms.name("append", "append-e2ee"), ctx.runs, || {
        let mut concord = ConcordRoom::create_in(&w, rooms)?;
        let (_, c_single) = timed(|| concord.post(single, 1))?;
        let raw = RawSled::create_for(rooms, ctx.seed)?;
        let (_, r_single) = timed(|| raw.append(&w, single, KeyLayout::IdFirst, 1))?;
        let mut concord = ConcordRoom::create_in(&w, rooms)?;
        let (_, c_group) = timed(|| concord.post(&w.messages, GROUP))?;
        let raw = RawSled::create_for(rooms, ctx.seed)?;
        let (_, r_group) = timed(|| raw.append(&w, &w.messages, KeyLayout::IdFirst, GROUP))?;
        let mut row = [
            rate(single.len(), c_single),
            rate(single.len(), r_single),
            rate(w.messages.len(), c_group),
            rate(w.messages.len(), r_group),
            0.0,
            0.0,
            per_message(concord.sent_bytes),
            0.0,
            0.0,
        ];
        if encrypted {
            let mut clear = ConcordRoom::create_in(&w, Rooms::Unencrypted)?;
            let (_, u_group) = timed(|| clear.post(&w.messages, GROUP))?;
            row[4] = rate(w.messages.len(), u_group);
            row[5] = per_message(clear.sent_bytes);
            let mut sender = Sender::new(ctx.seed);
            let (_, work) = timed(|| {
                for m in &w.messages {
                    std::hint::black_box(sender.post(&m.id, m.body.as_bytes())?);
                }
                Ok(())
            })?;
            row[7] = work / w.messages.len() as f64;
            let (_, bare) = timed(|| {
                for m in &w.messages {
                    std::hint::black_box(sender.encrypt(m.body.as_bytes()));
                }
                Ok(())
            })?;
            row[8] = bare / w.messages.len() as f64;
        }
        Ok(row)
    })?;
    let baseline_name = if encrypted { "raw sled + the same cryptography" } else { "raw sled" };
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
    let mut metrics = vec![per_commit, grouped];
    if encrypted {
        metrics.extend([
            Metric::side_by_side(
                "encryption's cost: group commit in this encrypted room (baseline column: in an unencrypted room)",
                Unit::PerSecond,
                &column(&rows, 2),
                &column(&rows, 4),
            ),
            Metric::side_by_side(
                "encryption's cost: delivery bytes per message (baseline column: unencrypted room)",
                Unit::Bytes,
                &column(&rows, 6),
                &column(&rows, 5),
            ),
            Metric::alone(
                "the baseline's cryptography alone per message (encrypt, sign, seal)",
                Unit::Micros,
                &column(&rows, 7),
            ),
            Metric::alone(
                "of which Megolm encrypt and Ed25519 sign",
                Unit::Micros,
                &column(&rows, 8),
            ),
        ]);
    }
    Ok(Report {
        name: rooms.name("append", "append-e2ee"),
        workload: format!(
            "{} messages of 20–200 bytes into one {} room, 4,000 per day of clock time; \
             one per commit for the first {}, then all of them {GROUP} per commit \
             (a fresh store for each)",
            thousands(w.messages.len() as f64),
            if encrypted { "end-to-end encrypted" } else { "unencrypted" },
            thousands(single.len() as f64)
        ),
        baseline_name,
        baseline: if encrypted {
            "one tree, key id ‖ author ‖ time; per message a Megolm encryption of the body \
             (vodozemac), an Ed25519 signature of the ciphertext and an XChaCha20-Poly1305 \
             seal of the body, the value being ciphertext, signature and sealed body; flush \
             after each message, or one 100-entry batch and a flush"
                .into()
        } else {
            "one tree, key id ‖ author ‖ time, value the body; flush after each \
             message, or one 100-entry batch and a flush"
                .into()
        },
        metrics,
        goals: vec![Goal::new(
            format!("group commit at least 0.8x {baseline_name}"),
            format!("{ratio:.2}x"),
            ratio >= 0.8,
        )],
    })
}
