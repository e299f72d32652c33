//! Catch-up sync between replicas, driven through the sans-IO session with
//! every message passed as bytes: exact costs for K of N missing envelopes,
//! blob healing, erased content never sent, windowed history, and bounded
//! memory.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use concord_core::{
    bucket_of, Anchor, Clock, Delivery, Draft, Hlc, ManualClock, MemoryStore, MessageId, Op,
    Replica, RoomId, SyncSession, TimelineDiff, BUCKET_SPAN_MILLIS,
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
        common::join(&mut y, &mut x, &room);
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
                let target =
                    if delete { self.live[side].choose(&mut self.rng).copied() } else { None };
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

// ----- blobs and erasure --------------------------------------------------------

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn test_catch_up_heals_missing_blobs_and_never_sends_erased_ones() {
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    let mut x = common::memory_replica(1, &clock);
    let mut y = common::memory_replica(2, &clock);
    let room = x.create_room("blobs").unwrap();
    common::join(&mut y, &mut x, &room);
    let canary = b"CANARY-7f3a-never-leaves";
    let keep = x.post(&room, Draft::text("a body that must arrive")).unwrap();
    clock.advance(1_000);
    let secret = x.post(&room, Draft::text(String::from_utf8_lossy(canary))).unwrap();
    clock.advance(1_000);
    // Y got both envelopes without their blobs (a peer that dropped them).
    let stripped = |d: &Delivery| Delivery { envelope: d.envelope.clone(), blobs: Vec::new() };
    y.apply(&room, vec![stripped(&keep.delivery), stripped(&secret.delivery)]).unwrap();
    assert!(y.snapshot(&room).unwrap().messages.iter().all(|m| m.body.is_none()));
    assert!(y.bucket_digests(&room).unwrap().iter().any(|d| d.wants_blobs));
    // X deletes the canary before they meet again.
    x.delete(&room, &secret.id).unwrap();

    let run = sync_pair(&mut y, &mut x, &room, clock.now_millis());
    let (sx, sy) = (x.snapshot(&room).unwrap(), y.snapshot(&room).unwrap());
    assert_eq!(sx, sy);
    assert_eq!(sy.messages.len(), 1);
    assert_eq!(sy.messages[0].body.as_deref(), Some("a body that must arrive"));
    assert_eq!(sy.tombstones.len(), 1);
    assert!(!y.bucket_digests(&room).unwrap().iter().any(|d| d.wants_blobs));
    for m in &run.transcript {
        assert!(!contains(m, canary), "an erased body was sent");
    }
    for (_, _, v) in common::dump(y.store()) {
        assert!(!contains(&v, canary), "an erased body reached the peer's store");
    }
}

#[test]
fn test_identical_replicas_exchange_one_round_trip_of_digests() {
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    let mut x = common::memory_replica(1, &clock);
    let mut y = common::memory_replica(2, &clock);
    let room = x.create_room("same").unwrap();
    common::join(&mut y, &mut x, &room);
    let mut ds = Vec::new();
    for i in 0..30 {
        ds.push(x.post(&room, Draft::text(format!("m{i}"))).unwrap().delivery);
        clock.advance(BUCKET_SPAN_MILLIS / 7);
    }
    y.apply(&room, ds).unwrap();
    let run = sync_pair(&mut x, &mut y, &room, clock.now_millis());
    assert_eq!(run.flights, 2, "{run:?}");
    assert_eq!(run.transcript.len(), 2);
    assert!(run.bytes < 400, "{run:?}");
}

// ----- windowed history ---------------------------------------------------------

/// A recording listener.
#[derive(Default)]
struct Seen(std::sync::Mutex<Vec<TimelineDiff>>);

impl concord_core::TimelineListener for Seen {
    fn on_diffs(&self, _room: &RoomId, diffs: &[TimelineDiff]) {
        self.0.lock().unwrap().extend(diffs.iter().cloned());
    }
}

/// Serves one history fetch from `from` to `to`; returns whether one was needed.
fn fetch(to: &mut Replica<MemoryStore>, from: &mut Replica<MemoryStore>, room: &RoomId) -> bool {
    let now = EPOCH_MILLIS;
    let Some((mut s, msg)) = SyncSession::fetch_history(to, room, 15, now) else { return false };
    let mut r = SyncSession::respond(from, room, now);
    r.set_peer(to.author());
    for reply in r.handle(from, &msg, now).unwrap() {
        assert!(s.handle(to, &reply, now).unwrap().is_empty());
    }
    assert!(s.is_done() && r.is_done());
    true
}

#[test]
fn test_windowed_replica_fetches_older_buckets_when_paging_back() {
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    let mut full = common::memory_replica(1, &clock);
    let mut phone = common::memory_replica(2, &clock);
    let room = full.create_room("history").unwrap();
    common::join(&mut phone, &mut full, &room);
    // Ten days with ten messages each.
    let mut all = Vec::new();
    for day in 0..10 {
        for i in 0..10 {
            all.push(full.post(&room, Draft::text(format!("day {day} message {i}"))).unwrap());
            clock.advance(BUCKET_SPAN_MILLIS / 10);
        }
    }
    let today = bucket_of(Hlc::new(clock.now_millis(), 0));
    // The phone keeps the last three buckets and catches up on those only.
    phone.evict_before(&room, today - 2).unwrap();
    assert_eq!(phone.window(&room), Some(today - 2));
    let run = sync_pair(&mut phone, &mut full, &room, clock.now_millis());
    assert_eq!(run.rejected, 0);
    let held = phone.snapshot(&room).unwrap().messages;
    assert!(!held.is_empty());
    assert!(held.iter().all(|m| bucket_of(m.hlc) >= today - 2));
    assert_eq!(phone.cached_docs(), 3, "only the three kept buckets' documents were loaded");

    // A late change to a bucket the phone does not keep is not stored.
    let old = all[5].id;
    let reaction = full.react(&room, &old, "👍").unwrap();
    let r = phone.apply(&room, vec![reaction.delivery]).unwrap();
    assert_eq!(r, vec![Ok(concord_core::Applied::OutsideWindow)]);

    // Paging back reaches the window: the page says older history is on its way.
    let seen = Arc::new(Seen::default());
    let _sub = phone.subscribe(&room, seen.clone());
    let oldest = held.first().unwrap().cursor;
    let page = phone.page(&room, Anchor::Before(oldest), 20).unwrap();
    assert!(page.messages.is_empty() && page.fetching_older);
    assert_eq!(phone.history_wanted(), vec![(room, today - 2)]);

    // Fetch until nothing older remains; each fetch reaches the listener.
    let mut fetches = 0;
    while fetch(&mut phone, &mut full, &room) {
        fetches += 1;
        assert!(fetches < 20);
    }
    assert!(fetches >= 2, "history came in several fetches of whole buckets");
    assert_eq!(phone.window(&room), None);
    assert!(phone.history_wanted().is_empty());
    let inserted =
        seen.0.lock().unwrap().iter().filter(|d| matches!(d, TimelineDiff::Insert(_))).count();
    assert_eq!(inserted + held.len(), 100);
    assert_eq!(phone.snapshot(&room).unwrap(), full.snapshot(&room).unwrap());
    let page = phone.page(&room, Anchor::Before(oldest), 20).unwrap();
    assert_eq!(page.messages.len(), 20);
    assert!(page.has_more && !page.fetching_older);
}

// ----- bounded memory -----------------------------------------------------------

#[test]
fn test_document_cache_keeps_to_its_item_budget_but_never_drops_the_hot_document() {
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    let mut x = common::memory_replica(1, &clock);
    let room = x.create_room("a busy day, then a quiet one").unwrap();
    x.set_doc_cache_items(100);
    // One day's document grows past the budget: every post uses it, so it
    // stays (dropping it would mean rebuilding it for the next post).
    let mut first = None;
    for i in 0..150u64 {
        let sent = x.post(&room, Draft::text("busy")).unwrap();
        first.get_or_insert(sent.id);
        assert_eq!(x.cached_docs(), 1, "post {i}: the day's document stays in memory");
        assert_eq!(x.cached_doc_items(), i + 1);
        clock.advance(1);
    }
    // The next day's post uses only the next day's document: the big one
    // goes, and the cache is back within its budget.
    clock.advance(BUCKET_SPAN_MILLIS);
    x.post(&room, Draft::text("quiet")).unwrap();
    assert_eq!(x.cached_docs(), 1);
    assert_eq!(x.cached_doc_items(), 1);
    // The dropped document reloads when an edit needs it, and goes again
    // once the quiet day is used.
    let first = first.unwrap();
    x.edit(&room, &first, "edited the next day").unwrap();
    assert_eq!(x.cached_docs(), 1, "the quiet day's document went instead");
    assert_eq!(x.cached_doc_items(), 151);
    assert_eq!(
        x.message_by_id(&room, &first).unwrap().unwrap().body.as_deref(),
        Some("edited the next day")
    );
    x.post(&room, Draft::text("quiet again")).unwrap();
    assert_eq!((x.cached_docs(), x.cached_doc_items()), (1, 2));
}

#[test]
fn test_document_cache_stays_bounded_and_evicted_documents_reload() {
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    let mut x = common::memory_replica(1, &clock);
    let room = x.create_room("many buckets").unwrap();
    x.set_doc_cache(4);
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(x.post(&room, Draft::text("one a day")).unwrap().id);
        clock.advance(BUCKET_SPAN_MILLIS);
        assert!(x.cached_docs() <= 4);
    }
    // The oldest message's document was evicted long ago; editing reloads it.
    x.edit(&room, &ids[0], "edited a month later").unwrap();
    assert!(x.cached_docs() <= 4);
    let m = x.message_by_id(&room, &ids[0]).unwrap().unwrap();
    assert_eq!(m.body.as_deref(), Some("edited a month later"));
}

#[test]
fn test_cold_open_of_a_long_room_loads_no_documents() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    let room = {
        let store = concord_core::SledStore::open(dir.path()).unwrap();
        let mut x = Replica::open_with_seed(store, clock.clone(), [1; 32]).unwrap();
        let room = x.create_room("long").unwrap();
        for day in 0..40 {
            let ops = (0..50)
                .map(|i| Op::Post { room, draft: Draft::text(format!("{day}/{i}")) })
                .collect();
            x.commit(ops).unwrap();
            clock.advance(BUCKET_SPAN_MILLIS);
        }
        room
    };
    let store = concord_core::SledStore::open(dir.path()).unwrap();
    let x = Replica::open_with_seed(store, clock, [1; 32]).unwrap();
    let page = x.page(&room, Anchor::Latest, 50).unwrap();
    assert_eq!(page.messages.len(), 50);
    assert!(page.has_more);
    assert_eq!(x.cached_docs(), 0, "opening and paging touched no author document");
}
