//! The transactional outbox: every commit under an `OutboxStore` records
//! what a mirror must copy or erase, in the same atomic batch; records stay
//! across a reopen until acknowledged; an erased blob's waiting copies are
//! dropped with it.

mod common;

use std::sync::Arc;

use concord_core::{
    Draft, ManualClock, OutboxRecord, OutboxStore, Replica, SledStore, Store, Tree,
};

const CANARY: &str = "CANARY-outbox-7d1e";

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn open(
    path: &std::path::Path,
    clock: &Arc<ManualClock>,
    seed: u8,
) -> Replica<OutboxStore<SledStore>> {
    let store = OutboxStore::new(SledStore::open(path).unwrap()).unwrap();
    Replica::open_with_seed(store, clock.clone(), [seed; 32]).unwrap()
}

/// The outbox records blobs as they travel; these tests read their
/// contents, so their rooms are unencrypted (an encrypted room's blobs are
/// ciphertext, recorded the same way).
fn plain() -> concord_core::RoomOptions {
    concord_core::RoomOptions::default().encrypted(false)
}

fn kinds(records: &[(u64, OutboxRecord)]) -> Vec<&'static str> {
    records
        .iter()
        .map(|(_, r)| match r {
            OutboxRecord::Room(_) => "room",
            OutboxRecord::Envelope(_) => "envelope",
            OutboxRecord::Blob { .. } => "blob",
            OutboxRecord::Erased { .. } => "erased",
            OutboxRecord::Governance(_) => "governance",
        })
        .collect()
}

#[test]
fn test_commits_record_rooms_envelopes_blobs_and_erasures_until_acked() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let path = dir.path().join("relay");
    let (room, kept, seqs) = {
        let mut replica = open(&path, &clock, 1);
        let outbox = replica.store().outbox();
        let room = replica.create_room_opts("outbox", &plain()).unwrap();
        // The room and its governance's founding change, in one commit.
        assert_eq!(kinds(&outbox.pending(100).unwrap()), ["room", "governance"]);
        let kept = replica.post(&room, Draft::text("kept body")).unwrap();
        let pending = outbox.pending(100).unwrap();
        assert_eq!(kinds(&pending), ["room", "governance", "envelope", "blob"]);
        match &pending[2].1 {
            OutboxRecord::Envelope(e) => assert_eq!(e.room(), room),
            other => panic!("expected an envelope, got {other:?}"),
        }
        let seqs: Vec<u64> = pending.iter().map(|(s, _)| *s).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence numbers rise: {seqs:?}");
        (room, kept, seqs)
    };
    // A reopen (a crash after the commit) keeps every record, and numbering
    // continues after the last one.
    let mut replica = open(&path, &clock, 1);
    let outbox = replica.store().outbox();
    assert_eq!(outbox.pending(100).unwrap().len(), seqs.len());
    outbox.ack(seqs.iter().copied()).unwrap();
    assert!(outbox.pending(100).unwrap().is_empty());
    clock.advance(1_000);
    replica.edit(&room, &kept.id, "kept body, edited").unwrap();
    let after = outbox.pending(100).unwrap();
    assert!(after.iter().all(|(s, _)| *s > *seqs.last().unwrap()), "numbering continues");
    // The edit stores an envelope and a new body, and drops the old body
    // (blobs and erasures come in key order, that is by hash).
    let mut after = kinds(&after);
    after[1..].sort();
    assert_eq!(after, ["envelope", "blob", "erased"]);
}

#[test]
fn test_an_erased_blob_leaves_no_waiting_copy_in_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let mut replica = open(&dir.path().join("relay"), &clock, 2);
    let outbox = replica.store().outbox();
    let room = replica.create_room_opts("erasure", &plain()).unwrap();
    let secret = replica.post(&room, Draft::text(CANARY)).unwrap();
    replica.post(&room, Draft::text("an ordinary message")).unwrap();
    // The mirror is down: the canary waits in the outbox.
    let waiting = replica.store().inner().scan(
        Tree::Outbox,
        &concord_core::KeyRange::prefix(&[]),
        concord_core::Order::Ascending,
        usize::MAX,
    );
    assert!(waiting.unwrap().iter().any(|(_, v)| contains(v, CANARY)), "the canary was recorded");
    clock.advance(1_000);
    replica.delete(&room, &secret.id).unwrap();
    for (tree, k, v) in common::dump(replica.store()) {
        assert!(!contains(&k, CANARY) && !contains(&v, CANARY), "tree {tree:?} holds the canary");
    }
    let records = outbox.pending(100).unwrap();
    assert!(
        records
            .iter()
            .any(|(_, r)| matches!(r, OutboxRecord::Erased { room: r, .. } if *r == room)),
        "the erasure goes out to the mirror: {:?}",
        kinds(&records)
    );
    assert!(
        records.iter().any(|(_, r)| matches!(r, OutboxRecord::Blob { .. })),
        "the other message's body still waits"
    );
}

#[test]
fn test_envelopes_applied_from_a_peer_are_recorded_with_their_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let mut alice = common::memory_replica(3, &clock);
    let room = alice.create_room_opts("from a peer", &plain()).unwrap();
    alice.post(&room, Draft::text("hello relay")).unwrap();
    let mut relay = open(&dir.path().join("relay"), &clock, 4);
    common::join(&mut relay, &mut alice, &room);
    let outbox = relay.store().outbox();
    outbox.ack(outbox.pending(100).unwrap().into_iter().map(|(s, _)| s)).unwrap();
    let deliveries = alice.deliveries(&room).unwrap();
    let sent = deliveries.len();
    relay.apply(&room, deliveries).unwrap();
    let records = outbox.pending(100).unwrap();
    let envelopes = records.iter().filter(|(_, r)| matches!(r, OutboxRecord::Envelope(_))).count();
    assert_eq!(envelopes, sent);
    assert!(records.iter().any(
        |(_, r)| matches!(r, OutboxRecord::Blob { blob, .. } if contains(blob, "hello relay"))
    ));
}
