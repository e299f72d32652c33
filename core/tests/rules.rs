//! One named test per rule of the tombstone-aware merge (docs/architecture.md).

mod common;

use std::sync::Arc;

use concord_core::{
    Applied, Draft, EnvelopeError, Error, ManualClock, MemoryStore, Replica, RoomId, Tree,
};
use yrs::{Any, Map, Transact};

struct Room {
    clock: Arc<ManualClock>,
    alice: Replica<MemoryStore>,
    bob: Replica<MemoryStore>,
    carol: Replica<MemoryStore>,
    id: RoomId,
}

fn room() -> Room {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let mut alice = common::memory_replica(1, &clock);
    let mut bob = common::memory_replica(2, &clock);
    let mut carol = common::memory_replica(3, &clock);
    let id = alice.create_room("rules").unwrap();
    common::join(&mut bob, &mut alice, &id);
    common::join(&mut carol, &mut alice, &id);
    common::spread_governance(&alice, &mut bob, &id);
    Room { clock, alice, bob, carol, id }
}

fn blob_count(r: &Replica<MemoryStore>) -> usize {
    common::dump(r.store()).iter().filter(|(t, _, _)| *t == Tree::Blobs).count()
}

/// Within one author document an edit and a delete are causally ordered (the
/// author wrote one after the other), so "concurrent" here means: other
/// replicas receive them in every order, including the delete first. The
/// rendering rule does not look at arrival order or stamps: a tombstone from
/// the message's author hides the message for good, whatever edits exist.
#[test]
fn test_delete_concurrent_with_edit_delete_wins() {
    let mut r = room();
    let post = r.alice.post(&r.id, Draft::text("first draft")).unwrap();
    r.clock.advance(5);
    let edit = r.alice.edit(&r.id, &post.id, "second draft").unwrap();
    r.clock.advance(5);
    let delete = r.alice.delete(&r.id, &post.id).unwrap();
    let (p, e, d) = (post.delivery, edit.delivery, delete.delivery);

    // Bob saw the edit before the delete; Carol gets the delete first, then
    // the edit, then the post.
    r.bob.apply(&r.id, vec![p.clone(), e.clone()]).unwrap();
    assert_eq!(
        r.bob.message_by_id(&r.id, &post.id).unwrap().unwrap().body.as_deref(),
        Some("second draft")
    );
    r.bob.apply(&r.id, vec![d.clone()]).unwrap();
    let outcomes = r.carol.apply(&r.id, vec![d.clone()]).unwrap();
    assert_eq!(outcomes, vec![Ok(Applied::Pending)]);
    r.carol.apply(&r.id, vec![e.clone()]).unwrap();
    r.carol.apply(&r.id, vec![p.clone()]).unwrap();

    for replica in [&r.alice, &r.bob, &r.carol] {
        assert_eq!(replica.message_by_id(&r.id, &post.id).unwrap(), None);
        assert_eq!(replica.tombstones(&r.id).unwrap().len(), 1);
        assert_eq!(blob_count(replica), 0, "a deleted or edited-away body is still stored");
    }
    assert_eq!(r.alice.snapshot(&r.id).unwrap(), r.bob.snapshot(&r.id).unwrap());
    assert_eq!(r.alice.snapshot(&r.id).unwrap(), r.carol.snapshot(&r.id).unwrap());

    // The author cannot edit it any more either.
    assert!(matches!(r.alice.edit(&r.id, &post.id, "again"), Err(Error::MessageDeleted(_))));
}

#[test]
fn test_delete_before_post_never_shows_post() {
    let mut r = room();
    let post = r
        .alice
        .post(
            &r.id,
            Draft {
                text: "secret plan".into(),
                attachments: vec![b"map".to_vec()],
                ..Draft::default()
            },
        )
        .unwrap();
    r.clock.advance(5);
    let delete = r.alice.delete(&r.id, &post.id).unwrap();

    let seen = Arc::new(common::Recorder::default());
    let _sub = r.bob.subscribe(&r.id, seen.clone());
    assert_eq!(
        r.bob.apply(&r.id, vec![delete.delivery.clone()]).unwrap(),
        vec![Ok(Applied::Pending)]
    );
    assert_eq!(
        r.bob.apply(&r.id, vec![post.delivery.clone()]).unwrap(),
        vec![Ok(Applied::Applied)]
    );

    assert!(seen.take().is_empty(), "the post was shown");
    assert_eq!(r.bob.message_by_id(&r.id, &post.id).unwrap(), None);
    assert_eq!(blob_count(&r.bob), 0, "the body of a post deleted on arrival was stored");
    assert_eq!(r.bob.tombstones(&r.id).unwrap()[0].id, post.id);
    assert_eq!(r.bob.snapshot(&r.id).unwrap(), r.alice.snapshot(&r.id).unwrap());
}

#[test]
fn test_offline_replica_through_many_deletes_resurrects_nothing() {
    let mut r = room();
    let mut ids = Vec::new();
    for i in 0..50 {
        r.clock.advance(60_000);
        let sent = r.alice.post(&r.id, Draft::text(format!("message {i}"))).unwrap();
        ids.push(sent.id);
    }
    // Carol holds everything, bodies included, then goes offline for a week.
    let all = r.alice.deliveries(&r.id).unwrap();
    r.carol.apply(&r.id, all.clone()).unwrap();
    r.bob.apply(&r.id, all.clone()).unwrap();
    let stale = r.carol.deliveries(&r.id).unwrap();
    assert!(stale.iter().all(|d| !d.blobs.is_empty()));

    let mut deletes = Vec::new();
    for id in ids.iter().step_by(2).chain(ids.iter().skip(1).step_by(7)) {
        r.clock.advance(3_600_000);
        if let Ok(sent) = r.alice.delete(&r.id, id) {
            deletes.push(sent.delivery);
        }
    }
    r.bob.apply(&r.id, deletes).unwrap();
    r.clock.advance(7 * 24 * 3_600_000);

    // Carol comes back and resends everything she holds, stale bodies included.
    r.alice.apply(&r.id, stale.clone()).unwrap();
    r.bob.apply(&r.id, stale).unwrap();
    r.carol.apply(&r.id, r.alice.deliveries(&r.id).unwrap()).unwrap();

    let want = r.alice.snapshot(&r.id).unwrap();
    assert_eq!(want.tombstones.len(), 25 + 4);
    assert_eq!(want.messages.len(), 50 - 29);
    for replica in [&r.bob, &r.carol] {
        assert_eq!(replica.snapshot(&r.id).unwrap(), want);
    }
    for replica in [&r.alice, &r.bob, &r.carol] {
        assert_eq!(blob_count(replica), 21, "blobs of deleted messages came back");
        for t in &want.tombstones {
            assert_eq!(replica.message_by_id(&r.id, &t.id).unwrap(), None);
        }
    }
}

#[test]
fn test_order_is_hlc_author_id_and_stable() {
    let mut r = room();
    r.clock.advance(1_000);
    // Same wall clock on all three: equal stamps, so the author breaks the tie.
    let a = r.alice.post(&r.id, Draft::text("a")).unwrap();
    let b = r.bob.post(&r.id, Draft::text("b")).unwrap();
    let c = r.carol.post(&r.id, Draft::text("c")).unwrap();
    let mut deliveries = vec![a.delivery.clone(), b.delivery.clone(), c.delivery.clone()];
    r.alice.apply(&r.id, deliveries.clone()).unwrap();
    deliveries.reverse();
    r.bob.apply(&r.id, deliveries.clone()).unwrap();
    let shown = r.alice.snapshot(&r.id).unwrap().messages;
    let keys: Vec<_> = shown.iter().map(|m| (m.hlc, m.author, m.id)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(shown.iter().filter(|m| m.hlc == shown[0].hlc).count(), 3, "stamps should tie");
    assert_eq!(r.bob.snapshot(&r.id).unwrap().messages, shown);

    // Carol was offline and posts at her own (earlier) time; it arrives late.
    let late_clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS - 60_000));
    let mut dave =
        Replica::open_with_seed(MemoryStore::new(), late_clock.clone(), [4; 32]).unwrap();
    common::join(&mut dave, &mut r.alice, &r.id);
    let late = dave.post(&r.id, Draft::text("written offline")).unwrap();
    r.clock.advance(1_000);
    let after = r.alice.post(&r.id, Draft::text("later")).unwrap();
    r.alice.apply(&r.id, vec![late.delivery]).unwrap();
    let now: Vec<_> = r.alice.snapshot(&r.id).unwrap().messages.iter().map(|m| m.id).collect();
    assert_eq!(now[0], late.id, "a late offline message appears at its own time");
    let earlier: Vec<_> = shown.iter().map(|m| m.id).collect();
    assert_eq!(&now[1..4], earlier.as_slice(), "messages already shown kept their order");
    assert_eq!(now[4], after.id);
}

#[test]
fn test_only_author_can_edit_or_delete() {
    let mut r = room();
    let post = r.alice.post(&r.id, Draft::text("mine")).unwrap();
    r.bob.apply(&r.id, vec![post.delivery.clone()]).unwrap();
    assert!(matches!(r.bob.edit(&r.id, &post.id, "yours now"), Err(Error::NotAuthor(_))));
    assert!(matches!(r.bob.delete(&r.id, &post.id), Err(Error::NotAuthor(_))));

    // Bob forges a change to Alice's document: an update with Alice's client
    // id that removes her post, in an envelope signed by Bob.
    let alice_author = *r.alice.author().as_bytes();
    let client = concord_core::client_id(&r.alice.author());
    let doc = yrs::Doc::with_client_id(client);
    let messages = doc.get_or_insert_map("m");
    let tombstones = doc.get_or_insert_map("d");
    // Bring the forger's copy of Alice's document up to date first.
    let update = post.delivery.envelope.update().to_vec();
    {
        use yrs::updates::decoder::Decode;
        let mut txn = doc.transact_mut();
        txn.apply_update(yrs::Update::decode_v1(&update).unwrap()).unwrap();
    }
    let start = post.delivery.envelope.clock_range().1;
    let forged_update = {
        let mut txn = doc.transact_mut();
        let key = post.id.as_uuid().simple().to_string();
        messages.remove(&mut txn, &key);
        tombstones.insert(&mut txn, key, Any::Buffer(vec![0u8; 16].into()));
        txn.encode_update_v1()
    };
    let end = start + 1;
    let bob_key = common::signing_key(2);
    let envelope = post.delivery.envelope.clone();
    let base = common::RawEnvelope {
        room: *r.id.as_bytes(),
        bucket: envelope.bucket(),
        author: alice_author,
        client,
        clock_start: start,
        clock_end: end,
        hlc: envelope.hlc().as_u64() + 1,
        update: forged_update,
        blobs: vec![],
        gov_heads: envelope.gov_heads().to_vec(),
    };
    let before = common::dump(r.carol.store());
    r.carol.apply(&r.id, vec![post.delivery.clone()]).unwrap();
    let with_post = common::dump(r.carol.store());
    assert_ne!(before, with_post);

    // Claiming to be Alice: the signature is Bob's, so it does not verify.
    let forged = base.sign(&bob_key);
    assert_eq!(concord_core::Envelope::from_bytes(&forged), Err(EnvelopeError::BadSignature));
    // Signing honestly as Bob: the update touches Alice's client id.
    let as_bob = common::RawEnvelope {
        author: *r.bob.author().as_bytes(),
        client: concord_core::client_id(&r.bob.author()),
        ..base
    };
    let envelope = concord_core::Envelope::from_bytes(&as_bob.sign(&bob_key)).unwrap();
    let delivery = concord_core::Delivery::new(envelope, vec![]).unwrap();
    assert_eq!(
        r.carol.apply(&r.id, vec![delivery]).unwrap(),
        vec![Err(EnvelopeError::ForeignClient)]
    );
    assert_eq!(common::dump(r.carol.store()), with_post, "a rejected envelope changed the store");
    assert_eq!(
        r.carol.message_by_id(&r.id, &post.id).unwrap().unwrap().body.as_deref(),
        Some("mine")
    );
}

/// A device back after a long time may receive an author's history newest
/// first, one envelope at a time: everything waits, then the oldest envelope
/// unblocks the whole chain in one go (without recursing per envelope).
#[test]
fn test_long_pending_chain_integrates_in_one_step() {
    let mut r = room();
    let ops = (0..5_000)
        .map(|i| concord_core::Op::Post { room: r.id, draft: Draft::text(format!("m{i}")) })
        .collect();
    let mut deliveries: Vec<_> =
        r.alice.commit(ops).unwrap().into_iter().map(|sent| sent.unwrap().delivery).collect();
    let first = deliveries.remove(0);
    // All of one author's history waits here: give the author's share of
    // the pending limits room for it (honest catch-up sends in order).
    r.bob.set_pending_limit(5_000 * concord_core::PENDING_AUTHOR_SHARE as usize, u64::MAX);
    for d in deliveries.into_iter().rev() {
        assert_eq!(r.bob.apply(&r.id, vec![d]).unwrap(), vec![Ok(Applied::Pending)]);
    }
    assert!(r.bob.snapshot(&r.id).unwrap().messages.is_empty());
    assert_eq!(r.bob.apply(&r.id, vec![first]).unwrap(), vec![Ok(Applied::Applied)]);
    assert_eq!(r.bob.snapshot(&r.id).unwrap(), r.alice.snapshot(&r.id).unwrap());
    assert_eq!(r.bob.snapshot(&r.id).unwrap().messages.len(), 5_000);
    assert!(common::dump(r.bob.store()).iter().all(|(t, _, _)| *t != Tree::Pending));
}
