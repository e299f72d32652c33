//! One conformance suite for every relay store backend. A backend's test
//! calls `run` on a fresh, empty store, and `run_reopen` on the same store
//! reopened where the test can reopen it. A failure panics with what broke.

use std::collections::BTreeSet;

use concord_core::{
    BlobHash, Draft, Envelope, Genesis, Hlc, ManualClock, MemoryStore, Replica, RoomId,
    MAX_BLOB_BYTES,
};

use concord_node::relay::{EnvelopeKey, RelayStore, StoredEnvelope, Written};

/// Real signed envelopes and genesis records, from two replicas, to store.
pub struct Material {
    /// Two rooms.
    pub rooms: Vec<Genesis>,
    /// Envelopes of the first room, in two buckets.
    pub envelopes: Vec<StoredEnvelope>,
    /// An envelope of the second room, in the first room's first bucket.
    pub foreign: StoredEnvelope,
}

/// Builds [`Material`]: 40 posts by two authors in the first room across
/// two buckets, and one post in the second room.
pub fn material() -> Material {
    let clock = std::sync::Arc::new(ManualClock::new(1_750_000_000_000));
    let mut alice =
        Replica::open_with_seed(MemoryStore::new(), clock.clone(), [1; 32]).expect("replica");
    let mut bob =
        Replica::open_with_seed(MemoryStore::new(), clock.clone(), [2; 32]).expect("replica");
    let room = alice.create_room("relay conformance").expect("room");
    let genesis = alice.genesis(&room).expect("genesis").clone();
    bob.join_room(genesis.as_bytes()).expect("join");
    let other = bob.create_room("another room").expect("room");
    let mut envelopes = Vec::new();
    for i in 0..40u64 {
        let who = if i % 3 == 0 { &mut bob } else { &mut alice };
        let sent = who.post(&room, Draft::text(format!("message {i}"))).expect("post");
        envelopes.push(StoredEnvelope::of(&sent.delivery.envelope));
        clock.advance(if i == 19 { concord_core::BUCKET_SPAN_MILLIS } else { 7 });
    }
    let foreign = bob.post(&other, Draft::text("elsewhere")).expect("post");
    Material {
        rooms: vec![genesis, bob.genesis(&other).expect("genesis").clone()],
        envelopes,
        foreign: StoredEnvelope::of(&foreign.delivery.envelope),
    }
}

fn sorted(mut rows: Vec<StoredEnvelope>) -> Vec<StoredEnvelope> {
    rows.sort_by_key(|r| r.key);
    rows
}

/// The whole contract, on an empty store.
pub async fn run<S: RelayStore>(store: &S) {
    let m = material();
    let room = m.rooms[0].room_id();
    let name = store.backend();

    // Rooms: idempotent, listed.
    for g in &m.rooms {
        assert_eq!(store.put_room(g).await.expect("put room"), Written::Inserted, "{name}");
        assert_eq!(store.put_room(g).await.expect("put room"), Written::AlreadyPresent, "{name}");
    }
    let rooms: BTreeSet<RoomId> =
        store.rooms().await.expect("rooms").iter().map(Genesis::room_id).collect();
    assert_eq!(rooms, m.rooms.iter().map(Genesis::room_id).collect(), "{name}: rooms");

    // Envelopes: inserted once; every repeat leaves exactly one row.
    for e in m.envelopes.iter().rev() {
        assert_eq!(store.put_envelope(e).await.expect("put"), Written::Inserted, "{name}");
    }
    for e in &m.envelopes {
        for _ in 0..3 {
            let again = store.put_envelope(e).await.expect("put again");
            assert_eq!(again, Written::AlreadyPresent, "{name}: repeated put");
        }
    }
    store.put_envelope(&m.foreign).await.expect("put foreign");

    // Buckets: the two partitions, oldest first; none from the other room.
    let buckets: Vec<u32> =
        m.envelopes.iter().map(|e| e.bucket).collect::<BTreeSet<_>>().into_iter().collect();
    assert_eq!(buckets.len(), 2, "material spans two buckets");
    assert_eq!(store.buckets(room).await.expect("buckets"), buckets, "{name}: buckets");

    // A partition reads back whole, in sort order, and only its own rows.
    for &bucket in &buckets {
        let want = sorted(m.envelopes.iter().filter(|e| e.bucket == bucket).cloned().collect());
        let got = store.envelopes(room, bucket, None, 1000).await.expect("range");
        assert_eq!(got, want, "{name}: partition {bucket}");
        verify(&got);
        let newest = store.last_before(room, bucket, end_key(), 5).await.expect("newest");
        let expect: Vec<_> = want.iter().rev().take(5).cloned().collect();
        assert_eq!(newest, expect, "{name}: the newest 5 of partition {bucket}");
        // Paged: 3 at a time, each page strictly after the last key.
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = store.envelopes(room, bucket, after, 3).await.expect("page");
            assert!(page.len() <= 3, "{name}: page over its limit");
            let Some(last) = page.last() else { break };
            after = Some(last.key);
            paged.extend(page);
        }
        assert_eq!(paged, want, "{name}: paged partition {bucket}");
        // The last N before T: newest first, strictly before.
        let t = want[want.len() / 2].key;
        let last = store.last_before(room, bucket, t, 4).await.expect("last before");
        let expect: Vec<_> = want.iter().filter(|e| e.key < t).rev().take(4).cloned().collect();
        assert_eq!(last, expect, "{name}: last 4 before the middle");
        let none = store.last_before(room, bucket, want[0].key, 4).await.expect("before first");
        assert!(none.is_empty(), "{name}: nothing before the first key");
    }
    // An empty partition and an unknown room read as empty.
    let empty = store.envelopes(room, buckets[0] - 1, None, 10).await.expect("empty");
    assert!(empty.is_empty(), "{name}: empty partition");
    let stranger = RoomId::from_bytes([0xEE; 32]);
    assert!(store.buckets(stranger).await.expect("buckets").is_empty(), "{name}");
    // The other room's envelope, though in the same bucket number, is apart.
    let other = store.envelopes(m.foreign.room, m.foreign.bucket, None, 10).await.expect("other");
    assert_eq!(other, vec![m.foreign.clone()], "{name}: other room's partition");

    // Blobs: idempotent, up to the largest blob, erased for good.
    let big = vec![0xA5u8; MAX_BLOB_BYTES];
    let small = b"a small blob".to_vec();
    for blob in [&small, &big] {
        let hash = BlobHash::from_bytes(*blake3::hash(blob).as_bytes());
        assert_eq!(store.put_blob(room, hash, blob).await.expect("blob"), Written::Inserted);
        assert_eq!(
            store.put_blob(room, hash, blob).await.expect("blob again"),
            Written::AlreadyPresent,
            "{name}: repeated blob"
        );
        assert_eq!(store.blob(room, hash).await.expect("get").as_ref(), Some(blob), "{name}");
        assert_eq!(store.blob(stranger, hash).await.expect("get"), None, "{name}: room scope");
        assert!(store.erase_blob(room, hash).await.expect("erase"), "{name}: erase held");
        assert_eq!(store.blob(room, hash).await.expect("get"), None, "{name}: erased");
        assert!(!store.erase_blob(room, hash).await.expect("erase"), "{name}: erase twice");
    }
}

/// Runs after [`run`] on a reopened store: everything written is there.
pub async fn run_reopen<S: RelayStore>(reopened: &S) {
    let m = material();
    let room = m.rooms[0].room_id();
    let name = reopened.backend();
    assert_eq!(reopened.rooms().await.expect("rooms").len(), 2, "{name}: rooms after reopen");
    let mut all = Vec::new();
    for bucket in reopened.buckets(room).await.expect("buckets") {
        all.extend(reopened.envelopes(room, bucket, None, 1000).await.expect("range"));
    }
    assert_eq!(all, sorted(m.envelopes.clone()), "{name}: envelopes after reopen");
}

/// A key that sorts after every real one of its partition.
pub fn end_key() -> EnvelopeKey {
    EnvelopeKey {
        hlc: Hlc::from_u64(u64::MAX),
        author: concord_core::AuthorId::from_bytes([0xFF; 32]),
        id: [0xFF; 32],
    }
}

/// Decodes every stored envelope: a backend returns the bytes it was given.
fn verify(rows: &[StoredEnvelope]) {
    for r in rows {
        let envelope = Envelope::from_bytes(&r.bytes).expect("stored envelope verifies");
        assert_eq!(StoredEnvelope::of(&envelope), *r);
    }
}
