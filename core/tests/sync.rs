//! Catch-up sync between replicas, driven through the sans-IO session with
//! every message passed as bytes: exact costs for K of N missing envelopes,
//! blob healing, erased content never sent, windowed history, and bounded
//! memory.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use concord_core::{Clock,
    bucket_of, Anchor, Delivery, Draft, Hlc, ManualClock, MemoryStore, MessageId, Op, Replica,
    RoomId, SyncSession, TimelineDiff, BUCKET_SPAN_MILLIS,
};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::{sync_pair, EPOCH_MILLIS};

const N: usize = 100_000;
/// The history spans 50 days, so every bucket is among the recent digests.
const SPAN_DAYS: u64 = 50;
const STEP_MILLIS: u64 = SPAN_DAYS * BUCKET_SPAN_MILLIS / N as u64;
const BATCH: usize = 1000;

/// Two devices of one room, each authoring half the history.
struct Pair {
    clock: Arc<ManualClock>,
    x: Replica<MemoryStore>,
    y: Replica<MemoryStore>,
    room: RoomId,
    rng: ChaCha8Rng,
    deletes: bool,
    /// Each side's own live posts, for its deletes to pick from.
    live: [Vec<MessageId>; 2],
}

impl Pair {
    fn new(seed: u64, deletes: bool) -> Self {
        let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
        let mut x = common::memory_replica(1, &clock);
        let mut y = common::memory_replica(2, &clock);
        let room = x.create_room("sync cost").unwrap();
        y.join_room(x.genesis(&room).unwrap().as_bytes()).unwrap();
        let rng = ChaCha8Rng::seed_from_u64(seed);
        Self { clock, x, y, room, rng, deletes, live: [Vec::new(), Vec::new()] }
    }

    /// `count` operations by one side, in group commits; returns the deliveries.
    fn author(&mut self, side: usize, count: usize) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(count);
        let mut left = count;
        while left > 0 {
            let n = left.min(BATCH);
            left -= n;
            let mut ops = Vec::with_capacity(n);
            let mut chosen = BTreeSet::new();
            for _ in 0..n {
                // With deletes on, a third of the operations delete one of the
                // side's earlier posts: half of all posts end up deleted.
                let delete = self.deletes && self.rng.random_ratio(1, 3);
                let target = if delete { self.live[side].choose(&mut self.rng).copied() } else { None };
                match target {
                    Some(id) if chosen.insert(id) => ops.push(Op::Delete { room: self.room, id }),
                    _ => {
                        let len = self.rng.random_range(20..200);
                        let text: String =
                            (0..len).map(|_| self.rng.random_range(b'a'..=b'z') as char).collect();
                        ops.push(Op::Post { room: self.room, draft: Draft::text(text) });
                    }
                }
            }
            let is_post: Vec<bool> = ops.iter().map(|o| matches!(o, Op::Post { .. })).collect();
            let replica = if side == 0 { &mut self.x } else { &mut self.y };
            for (sent, post) in replica.commit(ops).unwrap().into_iter().zip(is_post) {
                let sent = sent.unwrap();
                if post {
                    self.live[side].push(sent.id);
                }
                out.push(sent.delivery);
            }
            self.clock.advance(STEP_MILLIS * n as u64);
            self.live[side].retain(|id| !chosen.contains(id));
        }
        out
    }

    /// Authors on both sides and delivers everything to both.
    fn common(&mut self, count: usize) {
        let mut done = 0;
        while done < count {
            let n = (count - done).min(BATCH);
            let side = (done / BATCH) % 2;
            let ds = self.author(side, n);
            let other = if side == 0 { &mut self.y } else { &mut self.x };
            for r in other.apply(&self.room, ds).unwrap() {
                r.unwrap();
            }
            done += n;
        }
    }
}


impl Pair {
    /// An independent copy of both devices (stores forked, same keys).
    fn fork(&self) -> Self {
        let clock = Arc::new(ManualClock::new(self.clock.now_millis()));
        let reopen = |r: &Replica<MemoryStore>, seed: u8| {
            Replica::open_with_seed(r.store().snapshot(), clock.clone(), [seed; 32]).unwrap()
        };
        Self {
            x: reopen(&self.x, 1),
            y: reopen(&self.y, 2),
            clock: clock.clone(),
            room: self.room,
            rng: self.rng.clone(),
            deletes: self.deletes,
            live: self.live.clone(),
        }
    }
}

/// Bytes of the envelopes in `ds` plus the blobs `holder` still holds for them.
fn payload(holder: &Replica<MemoryStore>, room: &RoomId, ds: &[Delivery]) -> u64 {
    ds.iter()
        .map(|d| {
            let blobs = holder.blobs(room, d.envelope.blob_hashes()).unwrap();
            (d.envelope.as_bytes().len() + blobs.iter().map(Vec::len).sum::<usize>()) as u64
        })
        .sum()
}

/// Divergence of K of N: both devices share N - K envelopes, then each
/// authors half of K while apart; one catch-up must reconcile them.
fn check_k_of_n(base: &Pair, base_len: usize, k: usize) {
    let mut p = base.fork();
    p.common(N - base_len - k);
    let dx = p.author(0, k.div_ceil(2));
    let dy = p.author(1, k / 2);
    let missing = payload(&p.x, &p.room, &dx) + payload(&p.y, &p.room, &dy);
    let now = p.clock.now_millis();
    let room = p.room;
    let run = sync_pair(&mut p.x, &mut p.y, &room, now);
    let budget = missing * 6 / 5 + 2048;
    println!(
        "deletes={} K={k}: {} flights, {} bytes sent for {} bytes missing (budget {budget})",
        p.deletes, run.flights, run.bytes, missing
    );
    assert_eq!(run.rejected, 0);
    // The first message and at most two round trips after it.
    assert!(run.flights <= 5, "{run:?}");
    assert!(run.bytes <= budget, "{run:?} over budget {budget}");
    let (sx, sy) = (p.x.snapshot(&room).unwrap(), p.y.snapshot(&room).unwrap());
    assert_eq!(sx, sy, "K={k}: replicas differ after catch-up");
    assert!(sx.messages.iter().all(|m| m.body.is_some()), "a live message lacks its body");
}

fn run_k_of_n(name: &str, deletes: bool) {
    let seed = common::test_seed(name);
    let base_len = N - 10_000;
    let mut base = Pair::new(seed, deletes);
    base.common(base_len);
    for k in [1, 100, 10_000] {
        check_k_of_n(&base, base_len, k);
    }
}

#[test]
fn test_catch_up_of_k_of_n_costs_two_round_trips_and_the_missing_bytes() {
    run_k_of_n("test_catch_up_of_k_of_n_costs_two_round_trips_and_the_missing_bytes", false);
}

#[test]
fn test_catch_up_of_k_of_n_with_half_deleted_sends_no_erased_bytes() {
    run_k_of_n("test_catch_up_of_k_of_n_with_half_deleted_sends_no_erased_bytes", true);
}
