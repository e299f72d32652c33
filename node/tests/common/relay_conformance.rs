//! One conformance suite for every relay store backend. A backend's test
//! calls `run` on a fresh, empty store, and `run_reopen` on the same store
//! reopened where the test can reopen it; `run_blobs` with its chunk size
//! (any size for a backend that keeps a blob in one row), and, for a
//! backend that splits blobs into chunks, `run_blob_rows` with a
//! [`BlobRows`] that reads and writes its blob rows directly. A failure
//! panics with what broke.

use std::collections::BTreeSet;
use std::future::Future;

use concord_core::{
    Action, BlobHash, Draft, Envelope, Genesis, GovChange, Hlc, ManualClock, MemoryStore, Op,
    Replica, RoomId, RoomOptions, BUCKET_SPAN_MILLIS, MAX_BLOB_BYTES, MAX_GOV_CHANGE_BYTES,
};

use concord_node::relay::{
    EnvelopeKey, RelayStore, RelayStoreError, StoredEnvelope, Written, MAX_STORED_BLOB_BYTES,
};

/// Real signed envelopes and genesis records, from two replicas, to store.
pub struct Material {
    /// Two rooms.
    pub rooms: Vec<Genesis>,
    /// Envelopes of the first room, in two buckets.
    pub envelopes: Vec<StoredEnvelope>,
    /// An envelope of the second room, in the first room's first bucket.
    pub foreign: StoredEnvelope,
}

/// Rooms without end-to-end encryption: Megolm and Olm draw fresh
/// randomness, and the material must be the same bytes each time it is
/// built (a reopened store is checked against a second build). What the
/// stores hold of encrypted rooms is checked in `tests/relay.rs`.
fn clear() -> RoomOptions {
    RoomOptions::default().encrypted(false)
}

/// Builds [`Material`]: 40 posts by two authors in the first room across
/// two buckets, and one post in the second room.
pub fn material() -> Material {
    let clock = std::sync::Arc::new(ManualClock::new(1_750_000_000_000));
    let mut alice =
        Replica::open_with_seed(MemoryStore::new(), clock.clone(), [1; 32]).expect("replica");
    let mut bob =
        Replica::open_with_seed(MemoryStore::new(), clock.clone(), [2; 32]).expect("replica");
    let room = alice.create_room_opts("relay conformance", &clear()).expect("room");
    let genesis = alice.genesis(&room).expect("genesis").clone();
    bob.join_room(genesis.as_bytes()).expect("join");
    let other = bob.create_room_opts("another room", &clear()).expect("room");
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

/// Envelopes written in batches: a room of its own, so the batch checks see
/// only their own rows.
pub struct BatchMaterial {
    /// The room.
    pub room: RoomId,
    /// [`BATCH_ENVELOPES`] posts by two authors, oldest first, over four
    /// buckets: 100 in the first, 200 in the second, 200 in the third and
    /// 100 in the fourth.
    pub envelopes: Vec<StoredEnvelope>,
}

/// Envelopes of [`batch_material`]: enough for 24 `BatchWriteItem` calls of
/// 25, three times the DynamoDB backend's calls in flight.
pub const BATCH_ENVELOPES: usize = 600;

/// Builds [`BatchMaterial`], 50 posts per commit.
pub fn batch_material() -> BatchMaterial {
    let clock = std::sync::Arc::new(ManualClock::new(1_750_000_000_000));
    let mut carol =
        Replica::open_with_seed(MemoryStore::new(), clock.clone(), [3; 32]).expect("replica");
    let mut dave =
        Replica::open_with_seed(MemoryStore::new(), clock.clone(), [4; 32]).expect("replica");
    let room = carol.create_room_opts("relay batches", &clear()).expect("room");
    dave.join_room(carol.genesis(&room).expect("genesis").as_bytes()).expect("join");
    let mut envelopes = Vec::with_capacity(BATCH_ENVELOPES);
    for start in (0..BATCH_ENVELOPES).step_by(50) {
        if [100, 300, 500].contains(&start) {
            clock.advance(BUCKET_SPAN_MILLIS);
        }
        let who = if start % 100 == 0 { &mut carol } else { &mut dave };
        let ops = (start..start + 50)
            .map(|i| Op::Post { room, draft: Draft::text(format!("batch message {i}")) })
            .collect();
        for sent in who.commit(ops).expect("commit") {
            envelopes.push(StoredEnvelope::of(&sent.expect("post").delivery.envelope));
        }
        clock.advance(50);
    }
    BatchMaterial { room, envelopes }
}

/// Signed governance changes of two rooms: the first room's founding
/// change and two topic changes, and the second room's founding change.
/// Each room comes with its changes, oldest first.
pub fn gov_material() -> Vec<(RoomId, Vec<GovChange>)> {
    let clock = std::sync::Arc::new(ManualClock::new(1_750_000_000_000));
    let mut erin =
        Replica::open_with_seed(MemoryStore::new(), clock.clone(), [5; 32]).expect("replica");
    let mut rooms = Vec::new();
    for (name, topics) in [("relay governance", 2), ("relay governance too", 0)] {
        let room = erin.create_room_opts(name, &clear()).expect("room");
        for i in 0..topics {
            clock.advance(11);
            erin.govern(&room, Action::SetTopic(format!("topic {i}"))).expect("govern");
        }
        let changes = erin.governance_since(&room, &[]).expect("governance");
        assert_eq!(changes.len(), 1 + topics, "the founding change and the topics");
        rooms.push((room, changes));
    }
    rooms
}

/// The bytes of `changes`, sorted: [`RelayStore::governance`] returns a
/// room's changes in no particular order.
fn gov_bytes(changes: &[GovChange]) -> Vec<Vec<u8>> {
    sorted_bytes(changes.iter().map(|c| c.as_bytes().to_vec()).collect())
}

fn sorted_bytes(mut rows: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    rows.sort();
    rows
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

    run_governance(store).await;
    run_batches(store).await;
}

/// blake3 of `blob`: the hash a blob is stored under.
pub fn blob_hash(blob: &[u8]) -> BlobHash {
    BlobHash::from_bytes(*blake3::hash(blob).as_bytes())
}

/// A blob of `len` bytes whose bytes depend on their position and on
/// `seed`, so that a chunk out of place shows, and blobs of different
/// seeds have different hashes (their own partitions).
pub fn patterned_blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i % 251) as u8).wrapping_mul(7).wrapping_add(seed)).collect()
}

/// What a blob read gave, short enough for a failure message (a blob can
/// be a mebibyte).
fn summary(got: &Result<Option<Vec<u8>>, RelayStoreError>) -> String {
    match got {
        Ok(Some(blob)) => {
            format!("Ok(a blob of {} bytes, blake3 {})", blob.len(), blake3::hash(blob))
        }
        other => format!("{other:?}"),
    }
}

/// Checks that a read gave exactly `want`, saying where it differs if not.
fn assert_blob(got: Option<Vec<u8>>, want: &[u8], what: &str) {
    let Some(got) = got else { panic!("{what}: no blob, want {} bytes", want.len()) };
    if got != want {
        let at =
            got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        panic!("{what}: {} bytes, want {}; first difference at byte {at}", got.len(), want.len());
    }
}

/// The room the blob cases use, apart from every other case's.
const BLOB_ROOM: RoomId = RoomId::from_bytes([0xC0; 32]);

/// Blobs at and around the boundaries of a backend's chunk size
/// `chunk`: the empty blob, one byte, one chunk less one byte, exactly one
/// chunk, one chunk and a byte, exactly two chunks, two and a byte, and
/// the largest blob. Each round-trips, is written once, is scoped to its
/// room, and is erased for good. A blob that does not hash to its key, or
/// is over the largest, is refused and leaves nothing.
pub async fn run_blobs<S: RelayStore>(store: &S, chunk: usize) {
    let name = store.backend();
    let room = BLOB_ROOM;
    let stranger = RoomId::from_bytes([0xEE; 32]);
    let sizes =
        [0, 1, chunk - 1, chunk, chunk + 1, 2 * chunk, 2 * chunk + 1, MAX_STORED_BLOB_BYTES];
    for (seed, len) in (1u8..).zip(sizes.into_iter().filter(|&n| n <= MAX_STORED_BLOB_BYTES)) {
        let blob = patterned_blob(len, seed);
        let hash = blob_hash(&blob);
        let what = format!("{name}: a blob of {len} bytes, chunks of {chunk}");
        assert_eq!(store.blob(room, hash).await.expect("get"), None, "{what}: before");
        assert_eq!(
            store.put_blob(room, hash, &blob).await.expect("put"),
            Written::Inserted,
            "{what}"
        );
        let again = store.put_blob(room, hash, &blob).await.expect("put again");
        assert_eq!(again, Written::AlreadyPresent, "{what}: repeated");
        assert_blob(
            store.blob(room, hash).await.expect("get"),
            &blob,
            &format!("{what}: round trip"),
        );
        assert_eq!(store.blob(stranger, hash).await.expect("get"), None, "{what}: room scope");
        assert!(store.erase_blob(room, hash).await.expect("erase"), "{what}: erase held");
        assert_eq!(store.blob(room, hash).await.expect("get"), None, "{what}: erased");
        assert!(!store.erase_blob(room, hash).await.expect("erase"), "{what}: erase twice");
        let put = store.put_blob(room, hash, &patterned_blob(len, seed)).await.expect("put");
        assert_eq!(put, Written::Inserted, "{what}: put again after an erase");
        assert!(store.erase_blob(room, hash).await.expect("erase"), "{what}: erase again");
    }

    // Bytes that are not the blob the hash names: refused, nothing stored.
    let blob = patterned_blob(chunk + 1, 0xF0);
    let other = blob_hash(b"another blob");
    match store.put_blob(room, other, &blob).await {
        Err(RelayStoreError::WrongHash) => {}
        got => panic!("{name}: a blob under another's hash gave {got:?}"),
    }
    assert_eq!(store.blob(room, other).await.expect("get"), None, "{name}: wrong hash stored");
    // One byte over the largest: refused, nothing stored.
    let huge = patterned_blob(MAX_STORED_BLOB_BYTES + 1, 0xF1);
    let hash = blob_hash(&huge);
    match store.put_blob(room, hash, &huge).await {
        Err(RelayStoreError::TooLarge { len, max, .. }) => {
            assert_eq!((len, max), (MAX_STORED_BLOB_BYTES + 1, MAX_STORED_BLOB_BYTES), "{name}")
        }
        got => panic!("{name}: an oversized blob gave {got:?}"),
    }
    assert_eq!(store.blob(room, hash).await.expect("get"), None, "{name}: oversized stored");
}

/// Direct access to a chunked backend's blob rows (the layout in the
/// backend's module docs), for the cases the store's API cannot set up or
/// see: a put cut short before its manifest, a chunk lost or damaged under
/// its manifest, and the rows an erase leaves.
pub trait BlobRows {
    /// The backend's chunk size.
    fn chunk_bytes(&self) -> usize;
    /// Writes chunk `index` (1 or more) of a blob as the backend does.
    fn write_chunk(
        &self,
        room: RoomId,
        hash: BlobHash,
        index: u32,
        data: &[u8],
    ) -> impl Future<Output = ()>;
    /// Deletes chunk `index` of a blob.
    fn remove_chunk(&self, room: RoomId, hash: BlobHash, index: u32) -> impl Future<Output = ()>;
    /// The rows the backend holds for a blob, chunk 0 included.
    fn count(&self, room: RoomId, hash: BlobHash) -> impl Future<Output = usize>;
}

/// The blob-chunk protocol as its rows show it: one row per chunk at and
/// around the chunk boundary; a blob whose manifest was not written is not
/// held, and the next put completes it; an erase removes every row, those
/// of a put cut short included; a chunk missing under its manifest (in the
/// middle or at the end) or holding other bytes is corrupt, never a short
/// or wrong blob. Each case has a blob (a partition) of its own.
pub async fn run_blob_rows<S: RelayStore, B: BlobRows>(store: &S, rows: &B) {
    let name = store.backend();
    let room = BLOB_ROOM;
    let c = rows.chunk_bytes();

    // One row per chunk: a chunk boundary starts a row.
    for (seed, (len, want)) in (0x10u8..).zip([(0, 1), (1, 1), (c, 1), (c + 1, 2), (2 * c, 2)]) {
        let blob = patterned_blob(len, seed);
        let hash = blob_hash(&blob);
        store.put_blob(room, hash, &blob).await.expect("put");
        assert_eq!(rows.count(room, hash).await, want, "{name}: rows of a blob of {len} bytes");
        assert!(store.erase_blob(room, hash).await.expect("erase"), "{name}");
        assert_eq!(rows.count(room, hash).await, 0, "{name}: rows after an erase ({len} bytes)");
    }

    // A blob of three chunks, and its chunks after the first.
    let three = |seed: u8| {
        let blob = patterned_blob(2 * c + 7, seed);
        let hash = blob_hash(&blob);
        (blob, hash)
    };
    let write_tail = |hash: BlobHash, blob: Vec<u8>| async move {
        for (index, piece) in (1u32..).zip(blob.chunks(c).skip(1)) {
            rows.write_chunk(room, hash, index, piece).await;
        }
    };

    // A put cut short before its manifest: not held; the next put makes it whole.
    let (blob, hash) = three(0x20);
    write_tail(hash, blob.clone()).await;
    assert_eq!(rows.count(room, hash).await, 2, "{name}: the chunks a put cut short left");
    let got = store.blob(room, hash).await.expect("get");
    assert_eq!(got, None, "{name}: a blob without its manifest is held");
    let put = store.put_blob(room, hash, &blob).await.expect("put over a put cut short");
    assert_eq!(put, Written::Inserted, "{name}: the put after one cut short");
    assert_blob(store.blob(room, hash).await.expect("get"), &blob, &format!("{name}: made whole"));
    assert_eq!(rows.count(room, hash).await, 3, "{name}: rows of a blob of three chunks");
    assert!(store.erase_blob(room, hash).await.expect("erase"), "{name}");
    assert_eq!(rows.count(room, hash).await, 0, "{name}: rows after erasing three chunks");

    // A put cut short, then erased: nothing was held, nothing is left.
    let (blob, hash) = three(0x21);
    write_tail(hash, blob).await;
    let held = store.erase_blob(room, hash).await.expect("erase a put cut short");
    assert!(!held, "{name}: a blob without its manifest was held");
    assert_eq!(rows.count(room, hash).await, 0, "{name}: rows after erasing a put cut short");

    // A chunk lost under its manifest, in the middle or at the end, or a
    // chunk with other bytes: corrupt, never a short or wrong blob; and
    // the erase still removes every row.
    for (seed, damage) in [(0x22u8, "middle"), (0x23, "last"), (0x24, "bytes")] {
        let (blob, hash) = three(seed);
        store.put_blob(room, hash, &blob).await.expect("put");
        match damage {
            "middle" => rows.remove_chunk(room, hash, 1).await,
            "last" => rows.remove_chunk(room, hash, 2).await,
            _ => {
                let mut other = blob[c..2 * c].to_vec();
                other[0] ^= 0xFF;
                rows.write_chunk(room, hash, 1, &other).await;
            }
        }
        let got = store.blob(room, hash).await;
        if !matches!(got, Err(RelayStoreError::Corrupt(_))) {
            panic!("{name}: a blob with its {damage} chunk damaged gave {}", summary(&got));
        }
        assert!(store.erase_blob(room, hash).await.expect("erase"), "{name}: erase {damage}");
        assert_eq!(rows.count(room, hash).await, 0, "{name}: rows after erasing ({damage})");
        assert_eq!(store.blob(room, hash).await.expect("get"), None, "{name}: erased ({damage})");
    }
}

/// Governance changes, on a store where [`gov_material`]'s rooms have none:
/// idempotent, kept apart by room, read back byte for byte, and refused
/// over [`MAX_GOV_CHANGE_BYTES`].
pub async fn run_governance<S: RelayStore>(store: &S) {
    let rooms = gov_material();
    let name = store.backend();
    for (room, _) in &rooms {
        assert!(store.governance(*room).await.expect("governance").is_empty(), "{name}");
    }

    for (room, changes) in &rooms {
        // Newest first: the store does not care about dependencies.
        for change in changes.iter().rev() {
            let put = store.put_governance(*room, change.head(), change.as_bytes());
            assert_eq!(put.await.expect("put governance"), Written::Inserted, "{name}");
        }
        for change in changes {
            let again = store.put_governance(*room, change.head(), change.as_bytes());
            let again = again.await.expect("put governance again");
            assert_eq!(again, Written::AlreadyPresent, "{name}: repeated governance change");
        }
    }

    // Each room reads back exactly its own changes, and they verify.
    for (room, changes) in &rooms {
        let got = store.governance(*room).await.expect("governance");
        assert_eq!(sorted_bytes(got.clone()), gov_bytes(changes), "{name}: governance of a room");
        for bytes in &got {
            let change = GovChange::from_bytes(bytes).expect("stored governance change verifies");
            assert_eq!(change.room(), *room, "{name}: a change of another room");
        }
    }
    let stranger = RoomId::from_bytes([0xEE; 32]);
    assert!(store.governance(stranger).await.expect("governance").is_empty(), "{name}");

    // One byte over the limit is refused and leaves nothing behind.
    let (room, changes) = &rooms[0];
    let mut oversized = changes[0].as_bytes().to_vec();
    oversized.resize(MAX_GOV_CHANGE_BYTES + 1, 0);
    let head = *blake3::hash(&oversized).as_bytes();
    match store.put_governance(*room, head, &oversized).await {
        Err(RelayStoreError::TooLarge { len, max, .. }) => {
            assert_eq!((len, max), (MAX_GOV_CHANGE_BYTES + 1, MAX_GOV_CHANGE_BYTES), "{name}");
        }
        other => panic!("{name}: an oversized governance change gave {other:?}"),
    }
    let got = store.governance(*room).await.expect("governance");
    assert_eq!(sorted_bytes(got), gov_bytes(changes), "{name}: after an oversized change");

    // The limit itself fits every backend's row. The store keeps bytes
    // without judging them (the replica does), so filler will do, in a
    // room of its own.
    let limit_room = RoomId::from_bytes([0xB0; 32]);
    let at_limit = vec![0x5Au8; MAX_GOV_CHANGE_BYTES];
    let put = store.put_governance(limit_room, [0x5A; 32], &at_limit).await;
    assert_eq!(put.expect("governance change at the limit"), Written::Inserted, "{name}");
    let got = store.governance(limit_room).await.expect("governance");
    assert_eq!(got, vec![at_limit], "{name}: governance change at the limit");
}

/// Reads every row of `room`, partition by partition in bucket order, and
/// checks that they are exactly `want` (distinct envelopes, in any order),
/// each once, and that the bucket listing names exactly their buckets.
pub async fn assert_exactly<S: RelayStore>(store: &S, room: RoomId, want: &[StoredEnvelope]) {
    let name = store.backend();
    let want = sorted(want.to_vec());
    let want_buckets: Vec<u32> =
        want.iter().map(|e| e.bucket).collect::<BTreeSet<_>>().into_iter().collect();
    let buckets = store.buckets(room).await.expect("buckets");
    assert_eq!(buckets, want_buckets, "{name}: the batches' buckets");
    let mut got = Vec::new();
    for bucket in buckets {
        got.extend(store.envelopes(room, bucket, None, 10_000).await.expect("range"));
    }
    let keys: BTreeSet<_> = got.iter().map(|e| (e.bucket, e.key)).collect();
    assert_eq!(keys.len(), got.len(), "{name}: an envelope stored twice");
    assert_eq!(got.len(), want.len(), "{name}: envelopes after the batches");
    assert_eq!(got, want, "{name}: the batches' envelopes");
}

/// The batch write, on a store where [`batch_material`]'s room is empty:
/// repeats inside a batch, overlaps across batches and between concurrent
/// batches, a batch sent again, and an empty batch, each leaving every
/// envelope exactly once with its bucket listed.
pub async fn run_batches<S: RelayStore>(store: &S) {
    let m = batch_material();
    let e = &m.envelopes;
    let name = store.backend();

    store.put_envelopes(&[]).await.expect("empty batch");
    assert!(store.buckets(m.room).await.expect("buckets").is_empty(), "{name}: empty batch");

    // Every envelope twice in one batch, in two orders: two buckets.
    let twice: Vec<_> = e[..200].iter().rev().chain(&e[..200]).cloned().collect();
    store.put_envelopes(&twice).await.expect("batch with repeats");
    assert_exactly(store, m.room, &e[..200]).await;

    // A batch overlapping the last one, and a third bucket.
    store.put_envelopes(&e[150..400]).await.expect("overlapping batch");
    assert_exactly(store, m.room, &e[..400]).await;

    // A single put, then batches over it: it stays one row.
    let single = store.put_envelope(&e[420]).await.expect("single put");
    assert_eq!(single, Written::Inserted, "{name}: single put before a batch");

    // Two overlapping batches at once, and a fourth bucket.
    let (a, b) = tokio::join!(store.put_envelopes(&e[400..550]), store.put_envelopes(&e[450..]));
    a.expect("concurrent batch");
    b.expect("concurrent batch");
    assert_exactly(store, m.room, e).await;

    // The whole flight again, as a relay does when a device resends it.
    store.put_envelopes(e).await.expect("batch again");
    store.put_envelopes(&e[..1]).await.expect("batch of one");
    assert_exactly(store, m.room, e).await;

    // A single put sees a batch's rows.
    for i in [0, 299, BATCH_ENVELOPES - 1] {
        let again = store.put_envelope(&e[i]).await.expect("single put");
        assert_eq!(again, Written::AlreadyPresent, "{name}: single put after a batch");
    }
    assert_exactly(store, m.room, e).await;
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
    for (room, changes) in gov_material() {
        let got = reopened.governance(room).await.expect("governance");
        assert_eq!(sorted_bytes(got), gov_bytes(&changes), "{name}: governance after reopen");
    }
    let batches = batch_material();
    assert_exactly(reopened, batches.room, &batches.envelopes).await;
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
