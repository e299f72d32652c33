//! Helpers shared by the core's integration tests: seeds, replicas, forging.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use concord_core::{
    ManualClock, MemoryStore, Replica, RoomId, Store, TimelineDiff, TimelineListener, Tree,
};
use ed25519_dalek::{Signer, SigningKey};

/// Start of the test epoch: a few hours before a bucket boundary, so short
/// simulations already span two buckets.
pub const EPOCH_MILLIS: u64 = 20_000 * concord_core::BUCKET_SPAN_MILLIS - 3 * 3_600_000;

// The unit tests' seed rule, from the one file both include.
#[path = "../../src/test_seed.rs"]
mod seed;
#[allow(unused_imports)] // not every test binary draws a seed
pub use seed::test_seed;

/// A replica on a memory store with a seeded key and a shared manual clock.
pub fn memory_replica(seed: u8, clock: &Arc<ManualClock>) -> Replica<MemoryStore> {
    Replica::open_with_seed(MemoryStore::new(), clock.clone(), [seed; 32]).unwrap()
}

/// `joiner` joins `host`'s room as a ticket and a first catch-up would
/// make it: the genesis, then the governance its envelopes cite, and the
/// joiner's own governance (its published device keys) back to the host.
pub fn join<S: Store, T: Store>(joiner: &mut Replica<S>, host: &mut Replica<T>, room: &RoomId) {
    joiner.join_room(host.genesis(room).unwrap().as_bytes()).unwrap();
    let changes = host.governance_since(room, &[]).unwrap();
    for outcome in joiner.apply_governance(room, changes).unwrap() {
        outcome.unwrap();
    }
    // The joiner published its device keys (an encrypted room); the host
    // learns them as a first catch-up would tell it, so it shares room keys.
    let back = joiner.governance_since(room, &host.governance_heads(room).unwrap()).unwrap();
    for outcome in host.apply_governance(room, back).unwrap() {
        outcome.unwrap();
    }
}

/// `to` takes every governance change `from` holds that it lacks, as the
/// governance half of a catch-up does (for devices that joined one after
/// another: each one's published keys reach the others through the host).
pub fn spread_governance<S: Store, T: Store>(
    from: &Replica<S>,
    to: &mut Replica<T>,
    room: &RoomId,
) {
    let changes = from.governance_since(room, &to.governance_heads(room).unwrap()).unwrap();
    for outcome in to.apply_governance(room, changes).unwrap() {
        outcome.unwrap();
    }
}

/// `joiner` takes `host`'s room from its genesis and governance only, as a
/// device does before any of its own changes reach the host: in an
/// encrypted room nobody shares room keys with it yet.
pub fn join_quietly<S: Store, T: Store>(joiner: &mut Replica<S>, host: &Replica<T>, room: &RoomId) {
    joiner.join_room(host.genesis(room).unwrap().as_bytes()).unwrap();
    let changes = host.governance_since(room, &[]).unwrap();
    for outcome in joiner.apply_governance(room, changes).unwrap() {
        outcome.unwrap();
    }
}

/// The room as a replica with the same device and keys renders it from
/// scratch out of `replica`'s envelopes: the check that incremental
/// rendering leaves no stale view. The fresh replica gets `replica`'s
/// device key, Olm account and sessions, so it decrypts what it can.
pub fn fresh_view<S: Store>(replica: &Replica<S>, room: &RoomId) -> concord_core::RoomSnapshot {
    let store = MemoryStore::new();
    let mut batch = concord_core::WriteBatch::new();
    for (tree, k, v) in dump(replica.store()) {
        if tree == Tree::Inbound || (tree == Tree::Meta && k == b"olm-account") {
            batch.put(tree, k, v);
        }
    }
    store.commit(batch).unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let mut fresh = Replica::open_with_seed(store, clock, replica.device_seed()).unwrap();
    join_quietly(&mut fresh, replica, room);
    fresh.apply(room, replica.deliveries(room).unwrap()).unwrap();
    fresh.snapshot(room).unwrap()
}

/// Every record of every tree, for checking that a rejected input changed nothing.
pub fn dump<S: Store>(store: &S) -> Vec<(Tree, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for tree in Tree::ALL {
        let all = concord_core::KeyRange::prefix(&[]);
        for (k, v) in store.scan(tree, &all, concord_core::Order::Ascending, usize::MAX).unwrap() {
            out.push((tree, k, v));
        }
    }
    out
}

/// The signing context every Concord signature is made under (docs/protocol.md).
pub const SIGNING_CONTEXT: &[u8] = b"concord signed envelope v1\0";

/// Fields of an update envelope, for building envelopes by hand from the
/// documented format, as an attacker (or another implementation) would.
pub struct RawEnvelope {
    pub room: [u8; 32],
    pub bucket: u32,
    pub author: [u8; 32],
    pub client: u64,
    pub clock_start: u32,
    pub clock_end: u32,
    pub hlc: u64,
    pub update: Vec<u8>,
    pub blobs: Vec<[u8; 32]>,
    pub gov_heads: Vec<[u8; 32]>,
}

impl RawEnvelope {
    /// Encodes the envelope and signs it with `signer` (who may not be the author).
    pub fn sign(&self, signer: &SigningKey) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"CNCE");
        b.push(2);
        b.extend_from_slice(&self.room);
        b.extend_from_slice(&self.bucket.to_be_bytes());
        b.extend_from_slice(&self.author);
        b.extend_from_slice(&self.client.to_be_bytes());
        b.extend_from_slice(&self.clock_start.to_be_bytes());
        b.extend_from_slice(&self.clock_end.to_be_bytes());
        b.extend_from_slice(&self.hlc.to_be_bytes());
        b.extend_from_slice(&(self.update.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.update);
        b.extend_from_slice(&(self.blobs.len() as u16).to_be_bytes());
        for h in &self.blobs {
            b.extend_from_slice(h);
        }
        b.push(self.gov_heads.len() as u8);
        for h in &self.gov_heads {
            b.extend_from_slice(h);
        }
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(&b);
        let sig = signer.sign(&msg).to_bytes();
        b.extend_from_slice(&sig);
        b
    }
}

/// Wraps envelope bytes into delivery bytes with the given blobs.
pub fn delivery_bytes(envelope: &[u8], blobs: &[Vec<u8>]) -> Vec<u8> {
    let mut b = b"CNCD".to_vec();
    b.push(1);
    b.extend_from_slice(&(envelope.len() as u32).to_be_bytes());
    b.extend_from_slice(envelope);
    b.extend_from_slice(&(blobs.len() as u16).to_be_bytes());
    for blob in blobs {
        b.extend_from_slice(&(blob.len() as u32).to_be_bytes());
        b.extend_from_slice(blob);
    }
    b
}

/// The signing key a replica opened with `open_with_seed([seed; 32])` uses.
pub fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Every file below `dir`, recursively (for inspecting a store's files).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A timeline listener that records every diff it is given.
#[derive(Default)]
pub struct Recorder(Mutex<Vec<TimelineDiff>>);

impl TimelineListener for Recorder {
    fn on_diffs(&self, _room: &RoomId, diffs: &[TimelineDiff]) {
        self.0.lock().unwrap().extend_from_slice(diffs);
    }
}

impl Recorder {
    /// The diffs received since the last call.
    pub fn take(&self) -> Vec<TimelineDiff> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// What one catch-up between two replicas cost.
#[derive(Debug, Default, Clone)]
pub struct SyncRun {
    /// Flights in both directions, the first message included.
    pub flights: u32,
    /// Bytes of every message in both directions.
    pub bytes: u64,
    /// Envelopes rejected by either side.
    pub rejected: u64,
    /// Flights either side answered with governance only, the peer not
    /// being a reader of the room.
    pub withheld: u32,
    /// Every message, in the order sent.
    pub transcript: Vec<Vec<u8>>,
}

/// Runs catch-up between `a` (initiator) and `b` until both sessions end,
/// passing every message through its byte encoding.
pub fn sync_pair<S: Store, T: Store>(
    a: &mut Replica<S>,
    b: &mut Replica<T>,
    room: &RoomId,
    now: u64,
) -> SyncRun {
    use concord_core::SyncSession;
    let (mut sa, mut to_b) = SyncSession::initiate(a, room, now).unwrap();
    let mut sb = SyncSession::respond(b, room, now);
    // Each side knows who the other is (the node learns it from the peer's
    // device certificate).
    sa.set_peer(b.author());
    sb.set_peer(a.author());
    let mut guard = 0;
    let mut transcript = to_b.clone();
    while !(sa.is_done() && sb.is_done()) {
        guard += 1;
        assert!(guard < 64, "sync did not end: {:?} {:?}", sa.stats(), sb.stats());
        let mut to_a = Vec::new();
        for m in to_b.drain(..) {
            to_a.extend(sb.handle(b, &m, now).unwrap());
        }
        transcript.extend(to_a.iter().cloned());
        for m in to_a {
            to_b.extend(sa.handle(a, &m, now).unwrap());
        }
        transcript.extend(to_b.iter().cloned());
        if to_b.is_empty() && !(sa.is_done() && sb.is_done()) {
            panic!("sync stalled: {:?} {:?}", sa.stats(), sb.stats());
        }
    }
    SyncRun {
        flights: sa.stats().flights_sent + sb.stats().flights_sent,
        bytes: sa.stats().bytes_sent + sb.stats().bytes_sent,
        rejected: sa.stats().envelopes_rejected + sb.stats().envelopes_rejected,
        withheld: sa.stats().flights_withheld + sb.stats().flights_withheld,
        transcript,
    }
}
