//! The replica's API as an app uses it: timeline subscriptions, paging with
//! cursors, unread counts, rooms, durability of pending envelopes across a
//! reopen, and typed errors for bad arguments and stores.

mod common;

use std::sync::Arc;

use concord_core::{
    Anchor, Applied, Cursor, Delivery, DeliveryState, Draft, Error, ManualClock, MemoryStore,
    Replica, RoomId, SledStore, Store, StoreError, TimelineDiff, Tree, WriteBatch,
};

use common::Recorder;

#[test]
fn test_subscription_delivers_insert_update_remove_until_dropped() {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let mut alice = common::memory_replica(1, &clock);
    let mut bob = common::memory_replica(2, &clock);
    let room = alice.create_room("diffs").unwrap();
    common::join(&mut bob, &mut alice, &room);
    let seen = Arc::new(Recorder::default());
    let sub = alice.subscribe(&room, seen.clone());

    let post = alice.post(&room, Draft::text("hi")).unwrap();
    match seen.take().as_slice() {
        [TimelineDiff::Insert(m)] => assert_eq!((m.id, m.body.as_deref()), (post.id, Some("hi"))),
        other => panic!("expected one insert, got {other:?}"),
    }
    alice.edit(&room, &post.id, "hello").unwrap();
    match seen.take().as_slice() {
        [TimelineDiff::Update(m)] => assert_eq!(m.body.as_deref(), Some("hello")),
        other => panic!("expected one update, got {other:?}"),
    }
    // A remote reaction is an update too, delivered when it is applied.
    bob.apply(&room, alice.deliveries(&room).unwrap()).unwrap();
    let like = bob.react(&room, &post.id, "👍").unwrap();
    alice.apply(&room, vec![like.delivery]).unwrap();
    match seen.take().as_slice() {
        [TimelineDiff::Update(m)] => assert_eq!(m.reactions[0].authors, vec![bob.author()]),
        other => panic!("expected one update, got {other:?}"),
    }
    alice.delete(&room, &post.id).unwrap();
    match seen.take().as_slice() {
        [TimelineDiff::Remove { id, .. }] => assert_eq!(*id, post.id),
        other => panic!("expected one remove, got {other:?}"),
    }
    drop(sub);
    alice.post(&room, Draft::text("unheard")).unwrap();
    assert!(seen.take().is_empty(), "a dropped subscription still received diffs");
}

#[test]
fn test_pages_walk_back_and_forth_with_cursors() {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let mut alice = common::memory_replica(1, &clock);
    let room = alice.create_room("pages").unwrap();
    let mut ids = Vec::new();
    for i in 0..45 {
        // Two hours apart: the room spans several buckets.
        clock.advance(2 * 3_600_000);
        ids.push(alice.post(&room, Draft::text(format!("m{i}"))).unwrap().id);
    }
    let latest = alice.page(&room, Anchor::Latest, 20).unwrap();
    assert!(latest.has_more);
    assert_eq!(
        latest.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids[25..].iter().rev().copied().collect::<Vec<_>>()
    );

    // Cursors survive a round trip through their string form, as an app stores them.
    let cursor: Cursor = latest.messages[19].cursor.to_string().parse().unwrap();
    let older = alice.page(&room, Anchor::Before(cursor), 20).unwrap();
    assert_eq!(older.messages[0].id, ids[24]);
    let oldest = alice.page(&room, Anchor::Before(older.messages[19].cursor), 20).unwrap();
    assert_eq!(oldest.messages.len(), 5);
    assert!(!oldest.has_more);

    let after = alice.page(&room, Anchor::After(oldest.messages[0].cursor), 3).unwrap();
    assert_eq!(
        after.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![ids[7], ids[6], ids[5]]
    );
    assert!(after.has_more);
    assert_eq!(alice.message_by_id(&room, &ids[7]).unwrap().unwrap().body.as_deref(), Some("m7"));
}

#[test]
fn test_unread_count_follows_read_marker_and_ignores_own_messages() {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let mut alice = common::memory_replica(1, &clock);
    let mut bob = common::memory_replica(2, &clock);
    let room = alice.create_room("unread").unwrap();
    common::join(&mut bob, &mut alice, &room);
    let mut last = None;
    for i in 0..6 {
        clock.advance(1_000);
        let sent = alice.post(&room, Draft::text(format!("m{i}"))).unwrap();
        bob.apply(&room, vec![sent.delivery]).unwrap();
        if i == 3 {
            last = Some(sent.id);
        }
    }
    bob.post(&room, Draft::text("my own")).unwrap();
    assert_eq!(bob.unread_count(&room).unwrap(), 6);
    let read = bob.mark_read(&room, &last.unwrap()).unwrap();
    assert_eq!(bob.unread_count(&room).unwrap(), 2);
    // The marker travels in Bob's document, after his own post in it.
    let outcomes = alice.apply(&room, bob.deliveries(&room).unwrap()).unwrap();
    assert!(outcomes.iter().all(|o| o.is_ok()));
    assert_eq!(read.delivery.envelope.author(), bob.author());
    let markers = alice.read_markers(&room).unwrap();
    assert_eq!(markers.get(&bob.author()).map(|c| c.sort_key().id), last);
    assert_eq!(alice.unread_count(&room).unwrap(), 1, "bob's own message is unread for alice");
    let bobs = alice
        .snapshot(&room)
        .unwrap()
        .messages
        .iter()
        .find(|m| m.author == bob.author())
        .unwrap()
        .id;
    alice.mark_read(&room, &bobs).unwrap();
    assert_eq!(alice.unread_count(&room).unwrap(), 0);
}

#[test]
fn test_rooms_are_listed_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let (a, b, author) = {
        let mut r = Replica::open(SledStore::open(dir.path()).unwrap(), clock.clone()).unwrap();
        let a = r.create_room("alpha").unwrap();
        clock.advance(1);
        let b = r.create_room("beta").unwrap();
        (a, b, r.author())
    };
    let r = Replica::open(SledStore::open(dir.path()).unwrap(), clock).unwrap();
    assert_eq!(r.author(), author, "the device key must persist");
    let rooms: Vec<_> = r.rooms().into_iter().map(|i| (i.id, i.name)).collect();
    assert_eq!(rooms, vec![(a, "alpha".to_owned()), (b, "beta".to_owned())]);
}

#[test]
fn test_pending_envelopes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let mut alice = common::memory_replica(1, &clock);
    let room = alice.create_room("pending").unwrap();
    let post = {
        let mut bob =
            Replica::open_with_seed(SledStore::open(dir.path()).unwrap(), clock.clone(), [2; 32])
                .unwrap();
        common::join(&mut bob, &mut alice, &room);
        let post = alice.post(&room, Draft::text("hello")).unwrap();
        let edit = alice.edit(&room, &post.id, "hello, edited").unwrap();
        assert_eq!(bob.apply(&room, vec![edit.delivery]).unwrap(), vec![Ok(Applied::Pending)]);
        post
    };
    let mut bob =
        Replica::open_with_seed(SledStore::open(dir.path()).unwrap(), clock, [2; 32]).unwrap();
    assert_eq!(bob.apply(&room, vec![post.delivery]).unwrap(), vec![Ok(Applied::Applied)]);
    assert_eq!(bob.snapshot(&room).unwrap(), alice.snapshot(&room).unwrap());
    assert_eq!(
        bob.message_by_id(&room, &post.id).unwrap().unwrap().body.as_deref(),
        Some("hello, edited")
    );
}

#[test]
fn test_bad_arguments_are_typed_errors() {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let mut alice = common::memory_replica(1, &clock);
    let room = alice.create_room("errors").unwrap();
    let unknown_room = RoomId::from_bytes([9; 32]);
    assert!(matches!(alice.post(&unknown_room, Draft::text("x")), Err(Error::UnknownRoom(_))));
    let too_long = "x".repeat(concord_core::MAX_BODY_BYTES + 1);
    assert!(matches!(alice.post(&room, Draft::text(too_long)), Err(Error::InvalidInput(_))));
    let post = alice.post(&room, Draft::text("x")).unwrap();
    assert!(matches!(alice.react(&room, &post.id, ""), Err(Error::InvalidInput(_))));
    let ghost = concord_core::MessageId::from_bytes([7; 16]);
    assert!(matches!(alice.edit(&room, &ghost, "y"), Err(Error::UnknownMessage(_))));
    assert!(matches!(alice.mark_read(&room, &ghost), Err(Error::UnknownMessage(_))));
    alice.delete(&room, &post.id).unwrap();
    assert!(matches!(alice.delete(&room, &post.id), Err(Error::MessageDeleted(_))));
    assert!(matches!(alice.react(&room, &post.id, "👍"), Err(Error::MessageDeleted(_))));
    assert!(matches!(alice.join_room(b"not a genesis"), Err(Error::Envelope(_))));
    assert!("not-a-cursor".parse::<Cursor>().is_err());
    // A failed operation in a group commit leaves the others intact.
    let results = alice
        .commit(vec![
            concord_core::Op::Post { room, draft: Draft::text("kept") },
            concord_core::Op::Edit { room, id: ghost, text: "nope".into() },
        ])
        .unwrap();
    assert!(results[0].is_ok() && results[1].is_err());
    assert_eq!(alice.snapshot(&room).unwrap().messages.len(), 1);
}

#[test]
fn test_version_1_store_migrates_to_wanted_blobs_bodies_and_sealed_content() {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let mut alice = common::memory_replica(1, &clock);
    let mut bob = common::memory_replica(2, &clock);
    // Stores of version 1 held no encrypted rooms.
    let plain = concord_core::RoomOptions::default().encrypted(false);
    let room = alice.create_room_opts("old store", &plain).unwrap();
    common::join(&mut bob, &mut alice, &room);
    let kept = alice.post(&room, Draft::text("body held")).unwrap();
    let lost = alice.post(&room, Draft::text("body lost")).unwrap();
    let stripped = Delivery { envelope: lost.delivery.envelope.clone(), blobs: Vec::new() };
    bob.apply(&room, vec![kept.delivery, stripped]).unwrap();
    // Make Bob's store look like version 1: blobs in the clear in
    // `blobs-1`, no `wanted-blobs-1`, no bodies, nothing sealed.
    let expected = bob.snapshot(&room).unwrap();
    let mut batch = WriteBatch::new();
    for tree in [
        Tree::WantedBlobs,
        Tree::Bodies,
        Tree::Blobs,
        Tree::ContentKeys,
        Tree::BucketKeys,
        Tree::Shred,
    ] {
        for (k, _) in common::dump(bob.store())
            .into_iter()
            .filter(|(t, ..)| *t == tree)
            .map(|(_, k, v)| (k, v))
        {
            batch.delete(tree, k);
        }
    }
    for d in bob.deliveries(&room).unwrap() {
        for blob in d.blobs {
            let hash = blake3::hash(&blob);
            let key = [room.as_bytes().as_slice(), hash.as_bytes()].concat();
            batch.put(Tree::LegacyBlobs, key, blob);
        }
    }
    batch.delete(Tree::Meta, b"kek-seq".to_vec());
    batch.put(Tree::Meta, b"schema".to_vec(), 1u32.to_be_bytes().to_vec());
    bob.store().commit(batch).unwrap();
    let store = bob.store().snapshot();
    drop(bob);

    let bob = Replica::open_with_seed(store, clock, [2; 32]).unwrap();
    assert_eq!(bob.snapshot(&room).unwrap(), expected);
    let digests = bob.bucket_digests(&room).unwrap();
    assert!(digests.iter().any(|d| d.wants_blobs), "the missing body is wanted again");
    let wanted: Vec<_> =
        digests.iter().map(|d| bob.bucket_versions(&room, d.bucket).unwrap()).collect();
    assert_eq!(wanted.iter().map(|v| v.wanted_blobs.len()).sum::<usize>(), 1);
}

#[test]
fn test_store_from_a_newer_version_is_refused() {
    let store = MemoryStore::new();
    let mut batch = WriteBatch::new();
    batch.put(Tree::Meta, b"schema".to_vec(), 99u32.to_be_bytes().to_vec());
    store.commit(batch).unwrap();
    let clock = Arc::new(ManualClock::new(0));
    match Replica::open(store, clock) {
        Err(Error::Store(StoreError::NewerSchema { found: 99, .. })) => {}
        other => panic!("expected NewerSchema, got {other:?}"),
    }
}

#[test]
fn test_sled_open_on_corrupt_files_is_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let s = SledStore::open(&path).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Tree::Meta, b"k".to_vec(), vec![7; 4096]);
        s.commit(batch).unwrap();
    }
    // Overwrite every file sled wrote with garbage.
    for file in common::files(&path) {
        let len = std::fs::metadata(&file).unwrap().len() as usize;
        std::fs::write(&file, vec![0xA5; len.max(64)]).unwrap();
    }
    match SledStore::open(&path) {
        Err(StoreError::Open(_)) => {}
        Err(other) => panic!("expected an Open error, got {other:?}"),
        // sled may treat a garbage log as empty; then nothing committed may reappear.
        Ok(s) => assert_eq!(s.get(Tree::Meta, b"k").unwrap(), None),
    }
}

#[test]
fn test_sled_open_on_a_file_path_is_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-dir");
    std::fs::write(&path, b"plain file").unwrap();
    assert!(matches!(SledStore::open(&path), Err(StoreError::Open(_))));
}

#[test]
fn test_delivery_states_follow_the_reached_watermark_and_read_markers() {
    let clock = Arc::new(ManualClock::new(1_750_000_000_000));
    let dir = tempfile::tempdir().unwrap();
    let mut alice = Replica::open_with_seed(
        concord_core::SledStore::open(dir.path()).unwrap(),
        clock.clone(),
        [1; 32],
    )
    .unwrap();
    let mut bob = common::memory_replica(2, &clock);
    let carol = common::memory_replica(3, &clock);
    let room = alice.create_room("states").unwrap();
    common::join(&mut bob, &mut alice, &room);
    let first = alice.post(&room, Draft::text("first")).unwrap();
    let states = |r: &Replica<concord_core::SledStore>| {
        let messages = r.snapshot(&room).unwrap().messages;
        r.delivery_states(&room, &messages).unwrap()
    };
    assert_eq!(states(&alice), vec![Some(DeliveryState::Saved)]);
    assert_eq!(alice.reached(&room).unwrap(), None);

    // A catch-up that began now and finished proves everything so far.
    let watermark = alice.last_stamp();
    clock.advance(10);
    let second = alice.post(&room, Draft::text("after the watermark")).unwrap();
    assert!(alice.mark_reached(&room, watermark).unwrap());
    assert!(!alice.mark_reached(&room, watermark).unwrap(), "the watermark only moves forward");
    assert_eq!(states(&alice), vec![Some(DeliveryState::Reached), Some(DeliveryState::Saved)]);

    // Bob's message carries no state on Alice's side; his read marker on
    // the second message makes both "seen by 1".
    bob.apply(&room, vec![first.delivery.clone(), second.delivery.clone()]).unwrap();
    clock.advance(10);
    let by_bob = bob.post(&room, Draft::text("bob's")).unwrap();
    clock.advance(10);
    let read = bob.mark_read(&room, &second.id).unwrap();
    alice.apply(&room, vec![by_bob.delivery, read.delivery]).unwrap();
    assert_eq!(
        states(&alice),
        vec![Some(DeliveryState::SeenBy(1)), Some(DeliveryState::SeenBy(1)), None]
    );
    // Alice's own read marker does not count as seen.
    alice.mark_read(&room, &second.id).unwrap();
    assert_eq!(states(&alice)[1], Some(DeliveryState::SeenBy(1)));
    // An unknown room is an error, not a default.
    let stranger = concord_core::RoomId::from_bytes([9; 32]);
    assert!(carol.reached(&stranger).is_err());

    // The watermark is durable.
    drop(alice);
    let alice =
        Replica::open(concord_core::SledStore::open(dir.path()).unwrap(), clock.clone()).unwrap();
    assert_eq!(alice.reached(&room).unwrap(), Some(watermark));
}
