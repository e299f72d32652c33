//! Hostile input: everything a peer, relay or ticket can hand the core that it
//! did not produce honestly. This file owns the tests that tampered, forged,
//! truncated, oversized, replayed, equivocating and random bytes are rejected
//! with a typed error, never a panic, and leave a replica's store unchanged.
//!
//! Allocation bounds while decoding are checked in `hostile_alloc.rs`, which
//! runs as its own test binary so nothing else allocates at the same time.
//!
//! The property tests run with a fixed seed derived from their name, printed
//! on every run; `CONCORD_SEED=<n>` replays a different one.
//!
//! One file over the house's 600 lines: every hostile input shares the
//! forging helpers and the check that a refused input changed nothing.

mod common;

use std::sync::Arc;

use concord_core::{
    Applied, Clock, Cursor, DecodeError, Delivery, Draft, Envelope, EnvelopeError, Error, Flight,
    Genesis, ManualClock, MemoryStore, MessageId, RawDelivery, Replica, RoomId, Sent, Signal,
    SignalKind, SyncError, SyncMessage, SyncSession, MAX_BLOB_BYTES, MAX_DELIVERY_BYTES,
    MAX_ENVELOPE_BYTES, MAX_UPDATE_BYTES, SIGNAL_BYTES, SIGNAL_FRESH_MILLIS,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use yrs::{Any, Map, Transact};

// Byte offsets of an envelope's fields (docs/protocol.md): magic, version,
// room, bucket, author, client, clock start, clock end, hlc, update length,
// then the update, the blob-hash count, the hashes and the signature.
const ROOM_AT: usize = 5;
const AUTHOR_AT: usize = 41;
const CLIENT_AT: usize = 73;
const UPDATE_LEN_AT: usize = 97;
const UPDATE_AT: usize = 101;
const SIGNATURE_LEN: usize = 64;

/// Two replicas in one room, and a post by Alice (a body and an attachment,
/// so its delivery carries two blobs) that nobody else has seen yet.
struct World {
    clock: Arc<ManualClock>,
    alice: Replica<MemoryStore>,
    bob: Replica<MemoryStore>,
    room: RoomId,
    post: Sent,
}

fn world() -> World {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let mut alice = common::memory_replica(1, &clock);
    let mut bob = common::memory_replica(2, &clock);
    let room = alice.create_room_opts("hostile", &plain()).unwrap();
    common::join(&mut bob, &mut alice, &room);
    clock.advance(10);
    let post = alice
        .post(
            &room,
            Draft {
                text: "hello".into(),
                attachments: vec![b"a picture".to_vec()],
                ..Draft::default()
            },
        )
        .unwrap();
    World { clock, alice, bob, room, post }
}

/// The options of these tests' rooms: unencrypted, since the forgeries here
/// are built by hand from the documented formats of unencrypted content;
/// forged room keys and ciphertexts of encrypted rooms are in `e2ee.rs`.
fn plain() -> concord_core::RoomOptions {
    concord_core::RoomOptions::default().encrypted(false)
}

/// A replica holding only the room's genesis, for tests that need a clean one.
fn fresh(w: &World, seed: u8) -> Replica<MemoryStore> {
    let mut r = common::memory_replica(seed, &w.clock);
    common::join_quietly(&mut r, &w.alice, &w.room);
    r
}

/// The fields of `envelope`, to re-sign variants of it by hand.
fn raw(envelope: &Envelope) -> common::RawEnvelope {
    let (clock_start, clock_end) = envelope.clock_range();
    common::RawEnvelope {
        room: *envelope.room().as_bytes(),
        bucket: envelope.bucket(),
        author: *envelope.author().as_bytes(),
        client: concord_core::client_id(&envelope.author()),
        clock_start,
        clock_end,
        hlc: envelope.hlc().as_u64(),
        update: envelope.update().to_vec(),
        blobs: envelope.blob_hashes().iter().map(|h| *h.as_bytes()).collect(),
        gov_heads: envelope.gov_heads().to_vec(),
    }
}

/// A yrs v1 update, written with `client` as the yrs client id, that inserts
/// one map entry per key into root map `m` of a fresh document: clock range
/// `0..keys.len()` of that client.
fn update_inserting(client: u64, keys: &[&str]) -> Vec<u8> {
    let doc = yrs::Doc::with_client_id(client);
    let messages = doc.get_or_insert_map("m");
    let mut txn = doc.transact_mut();
    for key in keys {
        messages.insert(&mut txn, *key, Any::Buffer(vec![7u8; 8].into()));
    }
    txn.encode_update_v1()
}

fn decode_err(e: DecodeError) -> EnvelopeError {
    EnvelopeError::Decode(e)
}

// ----- tampering and forgery -------------------------------------------------

#[test]
fn test_tampered_signature_or_body_is_rejected() {
    let mut w = world();
    let original = w.post.delivery.envelope.as_bytes().to_vec();
    assert!(Envelope::from_bytes(&original).is_ok(), "the untampered envelope must decode");
    let update_len = w.post.delivery.envelope.update().len();
    let signature_at = original.len() - SIGNATURE_LEN;

    let mut bad_signature = original.clone();
    bad_signature[signature_at + 10] ^= 0x01;
    assert_eq!(Envelope::from_bytes(&bad_signature), Err(EnvelopeError::BadSignature));
    let mut bad_body = original.clone();
    bad_body[UPDATE_AT + update_len / 2] ^= 0x01;
    assert_eq!(Envelope::from_bytes(&bad_body), Err(EnvelopeError::BadSignature));

    // Every other byte too. Structural bytes (magic, version, lengths, the
    // hash count) may fail to parse instead; the author may stop being a valid
    // key; every byte the signature covers and that still parses, and every
    // byte of the signature itself, must fail the signature check.
    let heads_count_at =
        UPDATE_AT + update_len + 2 + 32 * w.post.delivery.envelope.blob_hashes().len();
    let structural = |i: usize| {
        i < ROOM_AT
            || (UPDATE_LEN_AT..UPDATE_AT).contains(&i)
            || (UPDATE_AT + update_len..UPDATE_AT + update_len + 2).contains(&i)
            || i == heads_count_at
    };
    for i in 0..original.len() {
        for bit in [0x01u8, 0x80] {
            let mut tampered = original.clone();
            tampered[i] ^= bit;
            let result = Envelope::from_bytes(&tampered);
            if structural(i) {
                assert!(result.is_err(), "flipping structural byte {i} was accepted");
            } else if (AUTHOR_AT..CLIENT_AT).contains(&i) {
                assert!(
                    matches!(
                        result,
                        Err(EnvelopeError::BadSignature | EnvelopeError::BadAuthorKey)
                    ),
                    "flipping author byte {i}: {result:?}"
                );
            } else {
                assert_eq!(result, Err(EnvelopeError::BadSignature), "flipping byte {i}");
            }
        }
    }

    // A delivery built around a tampered envelope never reaches the replica:
    // decoding it fails, and Bob's store is exactly as it was.
    let before = common::dump(w.bob.store());
    for tampered in [&bad_signature, &bad_body] {
        let bytes = common::delivery_bytes(tampered, &w.post.delivery.blobs);
        assert_eq!(Delivery::from_bytes(&bytes), Err(EnvelopeError::BadSignature));
    }
    // A tampered genesis (the join ticket) is refused the same way.
    let genesis = w.alice.genesis(&w.room).unwrap().as_bytes().to_vec();
    for i in [genesis.len() - 1, genesis.len() - SIGNATURE_LEN - 1, 50] {
        let mut tampered = genesis.clone();
        tampered[i] ^= 0x01;
        assert!(
            matches!(w.bob.join_room(&tampered), Err(Error::Envelope(EnvelopeError::BadSignature))),
            "tampered genesis byte {i} was not refused with BadSignature"
        );
    }
    assert_eq!(common::dump(w.bob.store()), before, "a rejected input changed the store");
    assert_eq!(w.bob.rooms().len(), 1);

    // The honest delivery still applies, so the unchanged store above is the
    // rejection's doing and not a replica that cannot change.
    let honest = Delivery::from_bytes(&w.post.delivery.to_bytes()).unwrap();
    assert_eq!(w.bob.apply(&w.room, vec![honest]).unwrap(), vec![Ok(Applied::Applied)]);
    assert_ne!(common::dump(w.bob.store()), before);
}

#[test]
fn test_a_flight_verified_over_the_cores_gives_each_envelope_its_own_verdict() {
    let mut w = world();
    let mut flight = Vec::new();
    for i in 0..3 * concord_core::PARALLEL_VERIFY_MIN {
        w.clock.advance(1);
        let sent = w.alice.post(&w.room, Draft::text(format!("message {i}"))).unwrap();
        flight.push(sent.delivery.envelope.as_bytes().to_vec());
    }
    // Forged, truncated and emptied envelopes at the edges of every part.
    let last = flight.len() - 1;
    for at in [0, 1, concord_core::PARALLEL_VERIFY_MIN, flight.len() / 2, last] {
        let signature_at = flight[at].len() - SIGNATURE_LEN;
        flight[at][signature_at + 3] ^= 0x40;
    }
    flight[7].truncate(40);
    flight[last - 1].clear();
    let many = Envelope::from_bytes_many(&flight);
    let one_by_one: Vec<_> = flight.iter().map(|b| Envelope::from_bytes(b)).collect();
    assert_eq!(many, one_by_one);
    assert_eq!(many.iter().filter(|r| r.is_err()).count(), 7, "{many:?}");
    assert_eq!(many[1], Err(EnvelopeError::BadSignature));
    assert!(matches!(many[7], Err(EnvelopeError::Decode(_))), "{:?}", many[7]);
    // Small flights are verified in place, with the same verdicts.
    assert_eq!(Envelope::from_bytes_many(&flight[..3]), one_by_one[..3].to_vec());
}

#[test]
fn test_envelope_signed_by_someone_other_than_its_author_is_rejected() {
    let w = world();
    let base = raw(&w.post.delivery.envelope);
    // The hand-built encoding is the real one: signed by Alice it reproduces
    // her envelope byte for byte (Ed25519 signatures are deterministic).
    assert_eq!(base.sign(&common::signing_key(1)), w.post.delivery.envelope.as_bytes());

    // The same fields, author still Alice, signed by Bob.
    let forged = base.sign(&common::signing_key(2));
    assert_eq!(Envelope::from_bytes(&forged), Err(EnvelopeError::BadSignature));
    let delivery = common::delivery_bytes(&forged, &w.post.delivery.blobs);
    assert_eq!(Delivery::from_bytes(&delivery), Err(EnvelopeError::BadSignature));

    // An author field that is not an Ed25519 point at all is its own error.
    let mut not_a_key = raw(&w.post.delivery.envelope);
    not_a_key.author = [0xFF; 32];
    let forged = not_a_key.sign(&common::signing_key(2));
    assert!(matches!(
        Envelope::from_bytes(&forged),
        Err(EnvelopeError::BadAuthorKey | EnvelopeError::BadSignature)
    ));
}

#[test]
fn test_update_writing_another_authors_client_is_rejected() {
    let w = world();
    let alice_client = concord_core::client_id(&w.alice.author());
    let bob_author = w.bob.author();
    let bob_client = concord_core::client_id(&bob_author);
    let bob_key = common::signing_key(2);
    let mut carol = fresh(&w, 3);
    carol.apply(&w.room, vec![w.post.delivery.clone()]).unwrap();
    let before = common::dump(carol.store());
    let snapshot = carol.snapshot(&w.room).unwrap();

    // Bob signs honestly as himself, but the update inserts an item with
    // Alice's client id: a write into Alice's document.
    let honest_as_bob = |update: Vec<u8>, clock_end: u32| common::RawEnvelope {
        author: *bob_author.as_bytes(),
        client: bob_client,
        clock_start: 0,
        clock_end,
        hlc: w.post.delivery.envelope.hlc().as_u64() + 1,
        update,
        blobs: vec![],
        ..raw(&w.post.delivery.envelope)
    };
    let insert = honest_as_bob(update_inserting(alice_client, &["forged"]), 1).sign(&bob_key);
    let envelope = Envelope::from_bytes(&insert).expect("Bob's own signature verifies");
    let delivery = Delivery::new(envelope, vec![]).unwrap();
    assert_eq!(
        carol.apply(&w.room, vec![delivery]).unwrap(),
        vec![Err(EnvelopeError::ForeignClient)]
    );

    // Bob inserts into his own document, but the same update deletes Alice's
    // post (an item of her client) through the delete set.
    let bobs_update = |delete_alices_post: bool| {
        let doc = yrs::Doc::with_client_id(bob_client);
        let messages = doc.get_or_insert_map("m");
        {
            use yrs::updates::decoder::Decode;
            let update = yrs::Update::decode_v1(w.post.delivery.envelope.update()).unwrap();
            doc.transact_mut().apply_update(update).unwrap();
        }
        let mut txn = doc.transact_mut();
        if delete_alices_post {
            messages.remove(&mut txn, &w.post.id.as_uuid().simple().to_string());
        }
        messages.insert(&mut txn, "mine", Any::Buffer(vec![1u8].into()));
        txn.encode_update_v1()
    };
    let delete = honest_as_bob(bobs_update(true), 1).sign(&bob_key);
    let delivery = Delivery::from_bytes(&common::delivery_bytes(&delete, &[])).unwrap();
    assert_eq!(
        carol.apply(&w.room, vec![delivery]).unwrap(),
        vec![Err(EnvelopeError::ForeignClient)]
    );
    // Without the delete, the same envelope is Bob's to write and applies
    // (on another replica), so the delete set is what was refused above.
    let insert_only = honest_as_bob(bobs_update(false), 1).sign(&bob_key);
    let delivery = Delivery::from_bytes(&common::delivery_bytes(&insert_only, &[])).unwrap();
    let mut dave = fresh(&w, 4);
    assert_eq!(dave.apply(&w.room, vec![delivery]).unwrap(), vec![Ok(Applied::Applied)]);

    assert_eq!(common::dump(carol.store()), before, "a rejected envelope changed the store");
    assert_eq!(carol.snapshot(&w.room).unwrap(), snapshot);
}

// ----- truncation and size caps ----------------------------------------------

#[test]
fn test_truncated_envelopes_genesis_and_deliveries_are_rejected() {
    let w = world();
    let envelope = w.post.delivery.envelope.as_bytes().to_vec();
    let genesis = w.alice.genesis(&w.room).unwrap().as_bytes().to_vec();
    let delivery = w.post.delivery.to_bytes();
    assert_eq!(w.post.delivery.blobs.len(), 2, "the delivery should carry blobs to cut into");

    // Every field is fixed-size or length-prefixed, so any strict prefix ends
    // inside a field: the error is always Truncated, never a panic.
    for len in 0..envelope.len() {
        let result = Envelope::from_bytes(&envelope[..len]);
        assert!(
            matches!(result, Err(EnvelopeError::Decode(DecodeError::Truncated { .. }))),
            "envelope prefix of {len} bytes: {result:?}"
        );
    }
    for len in 0..genesis.len() {
        let result = Genesis::from_bytes(&genesis[..len]);
        assert!(
            matches!(result, Err(EnvelopeError::Decode(DecodeError::Truncated { .. }))),
            "genesis prefix of {len} bytes: {result:?}"
        );
    }
    for len in 0..delivery.len() {
        let result = Delivery::from_bytes(&delivery[..len]);
        assert!(
            matches!(result, Err(EnvelopeError::Decode(DecodeError::Truncated { .. }))),
            "delivery prefix of {len} bytes: {result:?}"
        );
    }
    // The whole of each still decodes, so the loops above stopped one short.
    assert!(Envelope::from_bytes(&envelope).is_ok());
    assert!(Genesis::from_bytes(&genesis).is_ok());
    assert!(Delivery::from_bytes(&delivery).is_ok());
}

#[test]
fn test_oversized_inputs_are_rejected_before_parsing() {
    let w = world();
    let envelope = w.post.delivery.envelope.as_bytes().to_vec();

    // Bytes that are not even an envelope (bad magic) but are one byte over
    // the cap report TooLarge: the size is checked before anything is parsed.
    fn too_large<T>(what: &'static str, len: usize, max: usize) -> Result<T, EnvelopeError> {
        Err(decode_err(DecodeError::TooLarge { what, len, max }))
    }
    let junk = vec![0xFFu8; MAX_ENVELOPE_BYTES + 1];
    assert_eq!(
        Envelope::from_bytes(&junk),
        too_large("envelope", MAX_ENVELOPE_BYTES + 1, MAX_ENVELOPE_BYTES)
    );
    // A real envelope padded past the cap, too.
    let mut padded = envelope.clone();
    padded.resize(MAX_ENVELOPE_BYTES + 1, 0);
    assert_eq!(
        Envelope::from_bytes(&padded),
        too_large("envelope", MAX_ENVELOPE_BYTES + 1, MAX_ENVELOPE_BYTES)
    );
    let junk = vec![0xFFu8; MAX_DELIVERY_BYTES + 1];
    assert_eq!(
        Delivery::from_bytes(&junk),
        too_large("delivery", MAX_DELIVERY_BYTES + 1, MAX_DELIVERY_BYTES)
    );
    let mut padded = w.post.delivery.to_bytes();
    padded.resize(MAX_DELIVERY_BYTES + 1, 0);
    assert_eq!(
        Delivery::from_bytes(&padded),
        too_large("delivery", MAX_DELIVERY_BYTES + 1, MAX_DELIVERY_BYTES)
    );
    let genesis_max = w.alice.genesis(&w.room).unwrap().as_bytes().len() + 255;
    let junk = vec![0xFFu8; genesis_max + 1];
    assert!(
        matches!(
            Genesis::from_bytes(&junk),
            Err(EnvelopeError::Decode(DecodeError::TooLarge { what: "genesis", .. }))
        ),
        "a genesis longer than any valid one must be TooLarge"
    );

    // Length prefixes that claim 4 GiB inside short inputs: refused by the
    // cap on that field, without reading (or allocating) what they claim.
    let huge = u32::MAX as usize;
    let mut claim = envelope[..UPDATE_LEN_AT].to_vec();
    claim.extend_from_slice(&u32::MAX.to_be_bytes());
    claim.extend_from_slice(&[0u8; 80]);
    assert_eq!(Envelope::from_bytes(&claim), too_large("update", huge, MAX_UPDATE_BYTES));

    let mut claim = b"CNCD\x01".to_vec();
    claim.extend_from_slice(&u32::MAX.to_be_bytes());
    claim.extend_from_slice(&envelope[..32]);
    assert_eq!(Delivery::from_bytes(&claim), too_large("envelope", huge, MAX_ENVELOPE_BYTES));

    let mut claim = common::delivery_bytes(&envelope, &[]);
    claim.truncate(claim.len() - 2);
    claim.extend_from_slice(&1u16.to_be_bytes());
    claim.extend_from_slice(&u32::MAX.to_be_bytes());
    claim.extend_from_slice(&[0u8; 32]);
    assert!(
        matches!(
            Delivery::from_bytes(&claim),
            Err(EnvelopeError::Decode(DecodeError::TooLarge { what: "blob", len, max }))
                if len == huge && max >= MAX_BLOB_BYTES
        ),
        "a blob claiming 4 GiB: {:?}",
        Delivery::from_bytes(&claim)
    );

    // Counts at their type's maximum are capped the same way.
    let update_len = w.post.delivery.envelope.update().len();
    let mut claim = envelope[..UPDATE_AT + update_len].to_vec();
    claim.extend_from_slice(&u16::MAX.to_be_bytes());
    claim.extend_from_slice(&[0u8; 96]);
    assert!(matches!(
        Envelope::from_bytes(&claim),
        Err(EnvelopeError::Decode(DecodeError::TooLarge { what: "blob hashes", len: 65535, .. }))
    ));
    let mut claim = common::delivery_bytes(&envelope, &[]);
    claim.truncate(claim.len() - 2);
    claim.extend_from_slice(&u16::MAX.to_be_bytes());
    assert!(matches!(
        Delivery::from_bytes(&claim),
        Err(EnvelopeError::Decode(DecodeError::TooLarge { what: "blobs", len: 65535, .. }))
    ));

    // A length within its cap but beyond the input is Truncated, not a read
    // past the end.
    let mut claim = envelope[..UPDATE_LEN_AT].to_vec();
    claim.extend_from_slice(&(MAX_UPDATE_BYTES as u32).to_be_bytes());
    claim.extend_from_slice(&[0u8; 80]);
    assert_eq!(
        Envelope::from_bytes(&claim),
        Err(decode_err(DecodeError::Truncated { what: "update" }))
    );
    let mut claim = common::delivery_bytes(&envelope, &[]);
    claim.truncate(claim.len() - 2);
    claim.extend_from_slice(&1u16.to_be_bytes());
    claim.extend_from_slice(&(MAX_BLOB_BYTES as u32).to_be_bytes());
    claim.extend_from_slice(&[0u8; 32]);
    assert_eq!(
        Delivery::from_bytes(&claim),
        Err(decode_err(DecodeError::Truncated { what: "blob" }))
    );
}

// ----- replay and equivocation -----------------------------------------------

#[test]
fn test_replayed_delivery_into_another_room_is_rejected_and_into_same_room_is_duplicate() {
    let mut w = world();
    let other = w.alice.create_room_opts("elsewhere", &plain()).unwrap();
    common::join(&mut w.bob, &mut w.alice, &other);
    let unknown = w.alice.create_room_opts("bob was never invited", &plain()).unwrap();
    // What an eavesdropper captured off the wire.
    let wire = w.post.delivery.to_bytes();
    let replay = || Delivery::from_bytes(&wire).unwrap();

    let before = common::dump(w.bob.store());
    assert_eq!(
        w.bob.apply(&other, vec![replay()]).unwrap(),
        vec![Err(EnvelopeError::WrongRoom { expected: other, found: w.room })]
    );
    assert!(
        matches!(w.bob.apply(&unknown, vec![replay()]), Err(Error::UnknownRoom(r)) if r == unknown)
    );
    assert_eq!(common::dump(w.bob.store()), before, "a replay into another room changed the store");
    assert!(w.bob.snapshot(&other).unwrap().messages.is_empty());

    // Delivered where it belongs, it applies once; every replay after that is
    // a duplicate that changes neither the rendering nor the store.
    assert_eq!(w.bob.apply(&w.room, vec![replay()]).unwrap(), vec![Ok(Applied::Applied)]);
    let snapshot = w.bob.snapshot(&w.room).unwrap();
    assert_eq!(snapshot.messages.len(), 1);
    let applied = common::dump(w.bob.store());
    assert_eq!(w.bob.apply(&w.room, vec![replay()]).unwrap(), vec![Ok(Applied::Duplicate)]);
    assert_eq!(
        w.bob.apply(&w.room, vec![replay(), replay()]).unwrap(),
        vec![Ok(Applied::Duplicate), Ok(Applied::Duplicate)]
    );
    assert_eq!(w.bob.snapshot(&w.room).unwrap(), snapshot);
    assert_eq!(common::dump(w.bob.store()), applied, "a duplicate changed the store");

    // Twice in one batch: the first applies, the second is its duplicate.
    let mut carol = fresh(&w, 3);
    assert_eq!(
        carol.apply(&w.room, vec![replay(), replay()]).unwrap(),
        vec![Ok(Applied::Applied), Ok(Applied::Duplicate)]
    );
    assert_eq!(carol.snapshot(&w.room).unwrap(), snapshot);
}

#[test]
fn test_equivocating_envelope_at_an_applied_clock_is_rejected() {
    let mut w = world();
    let alice_key = common::signing_key(1);
    let alice_client = concord_core::client_id(&w.alice.author());
    let real = w.post.delivery.clone();
    assert_eq!(real.envelope.clock_range(), (0, 1), "the forgeries below assume a first post");
    w.bob.apply(&w.room, vec![real.clone()]).unwrap();
    let before = common::dump(w.bob.store());
    let snapshot = w.bob.snapshot(&w.room).unwrap();

    // Alice (her real key: only she can do this) signs other envelopes for
    // the same place in her document: other update bytes, and the same update
    // under another stamp.
    let other_update = common::RawEnvelope {
        update: update_inserting(alice_client, &["not what you saw"]),
        blobs: vec![],
        ..raw(&real.envelope)
    };
    let other_stamp =
        common::RawEnvelope { hlc: real.envelope.hlc().as_u64() + 1, ..raw(&real.envelope) };
    let forgeries: Vec<Delivery> = [other_update, other_stamp]
        .iter()
        .map(|f| Delivery::from_bytes(&common::delivery_bytes(&f.sign(&alice_key), &[])).unwrap())
        .collect();
    for forged in &forgeries {
        assert_ne!(forged.envelope, real.envelope);
        assert_eq!(
            w.bob.apply(&w.room, vec![forged.clone()]).unwrap(),
            vec![Err(EnvelopeError::Equivocation)]
        );
    }
    assert_eq!(common::dump(w.bob.store()), before, "an equivocation changed the store");
    assert_eq!(w.bob.snapshot(&w.room).unwrap(), snapshot);

    // In one batch with the envelope it contradicts, the first one wins.
    let mut carol = fresh(&w, 3);
    let outcomes = carol.apply(&w.room, vec![real.clone(), forgeries[0].clone()]).unwrap();
    assert_eq!(outcomes, vec![Ok(Applied::Applied), Err(EnvelopeError::Equivocation)]);
    assert_eq!(carol.snapshot(&w.room).unwrap(), snapshot);
}

/// An equivocation that covers more than the applied envelope: same bucket
/// and clock start, a longer clock range, and a different item at the clock
/// already applied. It must be rejected like any other equivocation.
///
/// Regression: this was once accepted (`Ok(Applied)`): yrs skipped the clock
/// it already had and integrated the rest, and the forged envelope overwrote
/// the real one in the `envelopes` tree, which is keyed by clock start. The
/// replica then rendered Alice's real post but handed out only the forgery,
/// so a replica syncing from it never converged with it. Now an envelope that
/// starts inside the integrated range must equal the one stored there.
#[test]
fn test_equivocating_envelope_with_longer_clock_range_is_rejected() {
    let mut w = world();
    let alice_key = common::signing_key(1);
    let alice_client = concord_core::client_id(&w.alice.author());
    let real = w.post.delivery.clone();
    assert_eq!(real.envelope.clock_range(), (0, 1));
    w.bob.apply(&w.room, vec![real.clone()]).unwrap();
    let before = common::dump(w.bob.store());
    let snapshot = w.bob.snapshot(&w.room).unwrap();

    let longer = common::RawEnvelope {
        clock_end: 2,
        update: update_inserting(alice_client, &["instead of the post", "and one more"]),
        blobs: vec![],
        ..raw(&real.envelope)
    };
    let forged =
        Delivery::from_bytes(&common::delivery_bytes(&longer.sign(&alice_key), &[])).unwrap();
    let outcome = w.bob.apply(&w.room, vec![forged]).unwrap();
    assert!(
        matches!(outcome[..], [Err(_)]),
        "an overlapping equivocation was accepted: {outcome:?}"
    );
    assert_eq!(common::dump(w.bob.store()), before, "an equivocation changed the store");
    assert_eq!(w.bob.snapshot(&w.room).unwrap(), snapshot);

    // Whoever syncs from Bob renders what Bob renders.
    let held = w.bob.deliveries(&w.room).unwrap();
    assert!(held.iter().any(|d| d.envelope == real.envelope), "Bob no longer holds the post");
    let mut dave = fresh(&w, 4);
    dave.apply(&w.room, held).unwrap();
    assert_eq!(dave.snapshot(&w.room).unwrap(), snapshot);
}

/// A few bytes of update must not make the replica reserve gigabytes.
///
/// Regression: yrs's `Update::decode_v1` calls `try_reserve` with the client
/// count the update declares, before reading any client. The update `ff ff ff 7f` (a count of
/// 2^28 - 1, then nothing) makes it reserve about 21 GB of address space and
/// zero about 512 MiB of it, for some 0.7 s, before it fails with
/// `EndOfBuffer`. Anyone can sign such an envelope as themselves, and
/// `validate_update` hands the bytes to yrs before checking anything else, so
/// one 200-byte envelope costs every replica that receives it that memory
/// and time (an out-of-memory kill on a phone). The replica now checks the
/// leading counts before yrs reads them.
///
/// Linux only (it reads the address-space high-water mark from
/// `/proc/self/status`). It measures the whole process, and parallel test
/// threads can each reserve a 64 MiB glibc arena, so the bound is 1 GiB: far
/// below the ~21 GB the bug reserved, far above arena noise.
#[test]
#[cfg(target_os = "linux")]
fn test_tiny_update_declaring_many_clients_does_not_reserve_gigabytes() {
    fn vm_peak() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmPeak:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }
    let w = world();
    let alice = w.alice.author();
    let mut bob = fresh(&w, 2);
    let before = common::dump(bob.store());
    let envelope = common::RawEnvelope {
        room: *w.room.as_bytes(),
        bucket: w.post.delivery.envelope.bucket(),
        author: *alice.as_bytes(),
        client: concord_core::client_id(&alice),
        clock_start: 0,
        clock_end: 1,
        hlc: w.post.delivery.envelope.hlc().as_u64(),
        update: vec![0xFF, 0xFF, 0xFF, 0x7F],
        blobs: vec![],
        gov_heads: vec![],
    }
    .sign(&common::signing_key(1));
    let delivery = Delivery::from_bytes(&common::delivery_bytes(&envelope, &[])).unwrap();

    let peak = vm_peak();
    let outcome = bob.apply(&w.room, vec![delivery]).unwrap();
    let grew = vm_peak().saturating_sub(peak);
    // Declaring more than one client is claiming clients other than the author's.
    assert!(matches!(outcome[..], [Err(EnvelopeError::ForeignClient)]), "{outcome:?}");
    assert_eq!(common::dump(bob.store()), before);
    assert!(grew < 1 << 30, "a 4-byte update grew the address space by {} MiB", grew >> 20);
}

// ----- random and mutated bytes ----------------------------------------------

/// Random bytes, or random bytes behind a valid magic and version so that the
/// decoders get past the first five bytes.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..2048),
        (
            prop::sample::select(vec![&b"CNCE\x01"[..], b"CNCG\x01", b"CNCD\x01", b"CNCS\x01"]),
            vec(any::<u8>(), 0..2048)
        )
            .prop_map(|(head, tail)| [head, &tail[..]].concat()),
    ]
}

/// Strings for the id parsers: lossy text of random bytes, and hex of the
/// lengths the parsers expect (and near them), so the decoding paths behind
/// the length checks run too.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        vec(any::<u8>(), 0..2048).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "[0-9a-fA-F-]{30,40}",
        "[0-9a-fA-F]{62,66}",
        "[0-9a-fA-F]{110,114}",
        "[0-9a-fA-Fg-z{}é-]{0,120}",
    ]
}

/// One edit of a byte string: flip bits at, insert a byte before, or delete
/// the byte at a position (taken modulo the length when applied).
#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
    ];
    vec(one, 1..8)
}

fn mutate(bytes: &[u8], edits: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for edit in edits {
        match *edit {
            Mutation::Flip(i, mask) if !out.is_empty() => {
                let i = i % out.len();
                out[i] ^= mask;
            }
            Mutation::Insert(i, b) => out.insert(i % (out.len() + 1), b),
            Mutation::Delete(i) if !out.is_empty() => {
                let i = i % out.len();
                out.remove(i);
            }
            _ => {}
        }
    }
    out
}

thread_local! {
    /// Set while this thread feeds hostile input to code that catches panics
    /// itself (the replica wraps yrs in `catch_unwind`). Those caught panics are
    /// expected, so the hook below counts them instead of printing each one
    /// (with `RUST_BACKTRACE=1`, printing hundreds of backtraces takes a minute).
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Where quieted panics happened, with how often, for the test's summary.
static QUIETED: std::sync::Mutex<std::collections::BTreeMap<String, u32>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Installs, once per binary, a panic hook that stays silent on a thread
/// while its `QUIET` flag is set and defers to the previous hook otherwise,
/// so the other tests running in parallel report their panics as usual.
fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(std::cell::Cell::get) {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
                let key = format!("{}: {message}", at.unwrap_or_default());
                *QUIETED.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_insert(0) += 1;
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `test` on `cases` values of `strategy`, from a fixed seed derived
/// from `name`, and fails with the (shrunk) input that broke it. With `quiet`,
/// panics on this thread are counted instead of printed while it runs; a
/// panic in the test itself still fails it, with its message.
fn check<S: Strategy>(
    name: &str,
    cases: u32,
    quiet: bool,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let config = ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(common::test_seed(name)),
        // This suite writes nothing to the source tree; a failure prints its
        // input, and the seed replays it.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let ran = std::cell::Cell::new(0u32);
    if quiet {
        install_quiet_hook();
        QUIET.with(|q| q.set(true));
    }
    let result = runner.run(&strategy, |value| {
        ran.set(ran.get() + 1);
        test(value)
    });
    QUIET.with(|q| q.set(false));
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    // Proptest counts only passing cases towards `cases`; make sure they ran.
    assert!(ran.get() >= cases, "{name}: only {} cases ran", ran.get());
    println!("{name}: {} cases passed", ran.get());
}

#[test]
fn test_random_bytes_never_panic_any_decoder() {
    check(
        "test_random_bytes_never_panic_any_decoder",
        10_000,
        false,
        (hostile_bytes(), hostile_text()),
        |(bytes, text)| {
            // Nothing random is correctly signed, so every decoder must refuse it.
            prop_assert!(Envelope::from_bytes(&bytes).is_err());
            prop_assert!(Genesis::from_bytes(&bytes).is_err());
            prop_assert!(Delivery::from_bytes(&bytes).is_err());
            // Random bytes may form a well-shaped sync message (nothing in it is
            // signed at that level); it must at least round-trip.
            if let Ok(m) = SyncMessage::from_bytes(&bytes) {
                prop_assert_eq!(SyncMessage::from_bytes(&m.to_bytes()), Ok(m));
            }
            let lossy = String::from_utf8_lossy(&bytes);
            for s in [&lossy[..], &text[..]] {
                // The parsers may accept well-formed text; whatever they accept
                // must print back to something that parses to the same value.
                if let Ok(c) = s.parse::<Cursor>() {
                    prop_assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
                }
                if let Ok(id) = s.parse::<MessageId>() {
                    prop_assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
                }
                if let Ok(room) = s.parse::<RoomId>() {
                    prop_assert_eq!(room.to_string().parse::<RoomId>(), Ok(room));
                }
            }
            Ok(())
        },
    );
}

#[test]
fn test_mutated_valid_encodings_are_rejected_without_panic() {
    let w = world();
    let envelope = w.post.delivery.envelope.as_bytes().to_vec();
    let delivery = w.post.delivery.to_bytes();
    let genesis = w.alice.genesis(&w.room).unwrap().as_bytes().to_vec();
    check(
        "test_mutated_valid_encodings_are_rejected_without_panic",
        10_000,
        false,
        (0..3usize, mutations()),
        |(which, edits)| {
            match which {
                0 => {
                    let bytes = mutate(&envelope, &edits);
                    let result = Envelope::from_bytes(&bytes);
                    // Ed25519 verification is strict, so no edit yields another
                    // valid envelope: only edits that cancel out give one back.
                    prop_assert_eq!(result.is_ok(), bytes == envelope, "{:?}", result);
                }
                1 => {
                    let bytes = mutate(&delivery, &edits);
                    // A delivery may legitimately lose a blob (the count and the
                    // blob both edited away); it can never gain or alter one.
                    if let Ok(d) = Delivery::from_bytes(&bytes) {
                        prop_assert_eq!(&d.envelope, &w.post.delivery.envelope);
                        prop_assert!(d.blobs.iter().all(|b| w.post.delivery.blobs.contains(b)));
                    }
                }
                _ => {
                    let bytes = mutate(&genesis, &edits);
                    let result = Genesis::from_bytes(&bytes);
                    prop_assert_eq!(result.is_ok(), bytes == genesis, "{:?}", result);
                }
            }
            Ok(())
        },
    );
}

/// How a correctly signed hostile update fared, for the summary line.
#[derive(Default)]
struct Tally {
    applied: std::cell::Cell<u32>,
    rejected: std::cell::Cell<u32>,
    panics_caught: std::cell::Cell<u32>,
}

#[test]
fn test_random_update_in_signed_envelope_never_panics_replica() {
    let w = world();
    let alice = w.alice.author();
    let alice_key = common::signing_key(1);
    let real = w.post.delivery.envelope.update().to_vec();
    // Random bytes, or Alice's real first update with a few edits: those get
    // much further into yrs's decoder and integration than noise does.
    // Pure noise mostly stops at the replica's check of the leading counts, so
    // a third of the cases start with a valid "one client, one block" header.
    let updates = prop_oneof![
        vec(any::<u8>(), 0..2048),
        mutations().prop_map(move |edits| mutate(&real, &edits)),
        vec(any::<u8>(), 0..2048).prop_map(|tail| [&[1u8, 1][..], &tail[..]].concat()),
    ];
    const CASES: u32 = 10_000;
    let tally = Tally::default();
    let name = "test_random_update_in_signed_envelope_never_panics_replica";
    check(name, CASES, true, updates, |update| {
        let envelope = common::RawEnvelope {
            room: *w.room.as_bytes(),
            bucket: w.post.delivery.envelope.bucket(),
            author: *alice.as_bytes(),
            client: concord_core::client_id(&alice),
            clock_start: 0,
            clock_end: 1,
            hlc: w.post.delivery.envelope.hlc().as_u64(),
            update,
            blobs: vec![],
            gov_heads: vec![],
        }
        .sign(&alice_key);
        // Correctly signed and well formed: the envelope layer must accept it,
        // so whatever happens next is the replica's judgement of the update.
        let delivery = Delivery::from_bytes(&common::delivery_bytes(&envelope, &[]));
        prop_assert!(delivery.is_ok(), "{:?}", delivery);
        let delivery = delivery.unwrap();

        let mut bob = fresh(&w, 2);
        let before = common::dump(bob.store());
        let outcome = bob.apply(&w.room, vec![delivery]);
        prop_assert!(outcome.is_ok(), "a memory store failed: {:?}", outcome);
        let outcome = outcome.unwrap();
        prop_assert_eq!(outcome.len(), 1);
        match &outcome[0] {
            Ok(_) => {
                tally.applied.set(tally.applied.get() + 1);
                // Alice may write whatever she likes into her own document;
                // the replica must still render it and hand it back out.
                let snapshot = bob.snapshot(&w.room);
                prop_assert!(snapshot.is_ok(), "{:?}", snapshot);
                let held = bob.deliveries(&w.room);
                prop_assert!(held.is_ok(), "{:?}", held);
            }
            Err(e) => {
                tally.rejected.set(tally.rejected.get() + 1);
                if matches!(e, EnvelopeError::BadUpdate(m) if m.contains("panicked")) {
                    tally.panics_caught.set(tally.panics_caught.get() + 1);
                }
                prop_assert!(
                    matches!(
                        e,
                        EnvelopeError::BadUpdate(_)
                            | EnvelopeError::ForeignClient
                            | EnvelopeError::ClockMismatch
                            | EnvelopeError::EmptyUpdate
                    ),
                    "unexpected rejection {:?}",
                    e
                );
                prop_assert_eq!(common::dump(bob.store()), before, "a rejection changed the store");
            }
        }
        Ok(())
    });
    println!(
        "{name}: applied {}, rejected {} (of which yrs panicked and the replica caught it: {})",
        tally.applied.get(),
        tally.rejected.get(),
        tally.panics_caught.get()
    );
    for (at, count) in QUIETED.lock().unwrap().iter() {
        println!("  caught panic x{count} at {at}");
    }
}

// ----- sync messages ---------------------------------------------------------

/// Every message of a real catch-up between Alice (who holds the post and a
/// few more messages) and a replica that holds nothing.
fn sync_transcript(w: &mut World) -> Vec<Vec<u8>> {
    for i in 0..3 {
        w.clock.advance(10);
        w.alice.post(&w.room, Draft::text(format!("more {i}"))).unwrap();
    }
    let mut empty = fresh(w, 9);
    let now = w.clock.now_millis();
    common::sync_pair(&mut empty, &mut w.alice, &w.room, now).transcript
}

/// Whether every message `victim` shows is one of `honest`'s, with the same
/// body or none: whatever a hostile message did, it planted nothing.
fn planted_nothing(
    victim: &Replica<MemoryStore>,
    honest: &Replica<MemoryStore>,
    room: &RoomId,
) -> bool {
    let theirs = honest.snapshot(room).unwrap().messages;
    victim
        .snapshot(room)
        .unwrap()
        .messages
        .iter()
        .all(|m| theirs.iter().any(|t| t.id == m.id && (m.body.is_none() || m.body == t.body)))
}

#[test]
fn test_mutated_sync_messages_never_panic_or_plant_content() {
    let mut w = world();
    let transcript = sync_transcript(&mut w);
    assert!(transcript.len() >= 4);
    let now = w.clock.now_millis();
    let tally = Tally::default();
    check(
        "test_mutated_sync_messages_never_panic_or_plant_content",
        10_000,
        true,
        (0..transcript.len(), mutations()),
        |(which, edits)| {
            let bytes = mutate(&transcript[which], &edits);
            let mut victim = fresh(&w, 8);
            let mut session = SyncSession::respond(&victim, &w.room, now);
            session.set_peer(w.alice.author());
            match session.handle(&mut victim, &bytes, now) {
                Ok(_) => tally.applied.set(tally.applied.get() + 1),
                Err(SyncError::Replica(e)) => {
                    return Err(TestCaseError::fail(format!("the replica failed: {e}")))
                }
                Err(_) => tally.rejected.set(tally.rejected.get() + 1),
            }
            prop_assert!(planted_nothing(&victim, &w.alice, &w.room));
            Ok(())
        },
    );
    println!("answered {}, refused {}", tally.applied.get(), tally.rejected.get());
    assert!(tally.applied.get() > 0 && tally.rejected.get() > 0);
}

#[test]
fn test_forged_envelope_in_a_flight_is_dropped_and_the_rest_applies() {
    let mut w = world();
    let honest = w.post.delivery.clone();
    w.clock.advance(10);
    let second = w.alice.post(&w.room, Draft::text("second")).unwrap().delivery;
    let mut forged = second.envelope.as_bytes().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let raw = |envelope: Vec<u8>, blobs: Vec<Vec<u8>>| RawDelivery { envelope, blobs };
    let flight = Flight {
        deliveries: vec![
            raw(honest.envelope.as_bytes().to_vec(), honest.blobs.clone()),
            raw(forged, second.blobs.clone()),
            raw(b"not an envelope".to_vec(), Vec::new()),
        ],
        ..Flight::default()
    };
    let bytes = SyncMessage::Flight { room: w.room, flight }.to_bytes();
    let now = w.clock.now_millis();
    let mut session = SyncSession::respond(&w.bob, &w.room, now);
    let replies = session.handle(&mut w.bob, &bytes, now).unwrap();
    // The flight asked nothing, so it is not answered and the session ends.
    assert!(replies.is_empty() && session.is_done());
    assert_eq!(session.stats().envelopes_applied, 1);
    assert_eq!(session.stats().envelopes_rejected, 2);
    let shown = w.bob.snapshot(&w.room).unwrap().messages;
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].body.as_deref(), Some("hello"));
}

#[test]
fn test_sync_protocol_violations_are_typed_errors() {
    let mut w = world();
    let now = w.clock.now_millis();
    let before = common::dump(w.bob.store());
    let room = w.room;

    let mut s = SyncSession::respond(&w.bob, &room, now);
    assert!(matches!(s.handle(&mut w.bob, b"CNCS\x01garbage", now), Err(SyncError::Decode(_))));
    assert!(s.is_failed());
    assert_eq!(s.handle(&mut w.bob, b"", now), Err(SyncError::Closed));

    let other = w.alice.create_room_opts("another", &plain()).unwrap();
    let elsewhere = SyncMessage::Fetch { room: other, before: 9, min_envelopes: 1 }.to_bytes();
    let mut s = SyncSession::respond(&w.bob, &room, now);
    assert_eq!(
        s.handle(&mut w.bob, &elsewhere, now),
        Err(SyncError::WrongRoom { expected: room, found: other })
    );

    // An initiator is never asked for history.
    let (mut s, _) = SyncSession::initiate(&w.bob, &room, now).unwrap();
    let fetch = SyncMessage::Fetch { room, before: 9, min_envelopes: 1 }.to_bytes();
    assert!(matches!(s.handle(&mut w.bob, &fetch, now), Err(SyncError::Unexpected(_))));

    // A peer that goes quiet times the session out.
    let (mut s, _) = SyncSession::initiate(&w.bob, &room, now).unwrap();
    assert_eq!(s.poll(now + concord_core::SESSION_TIMEOUT_MILLIS), Ok(()));
    assert_eq!(s.poll(now + concord_core::SESSION_TIMEOUT_MILLIS + 1), Err(SyncError::TimedOut));

    // A room the replica does not hold is refused, not created.
    let mut s = SyncSession::respond(&w.bob, &other, now);
    let hello = SyncSession::initiate(&w.alice, &other, now).unwrap().1;
    assert!(matches!(
        s.handle(&mut w.bob, &hello[0], now),
        Err(SyncError::Replica(Error::UnknownRoom(_)))
    ));
    assert_eq!(common::dump(w.bob.store()), before, "a refused message changed the store");
}

// ----- ephemeral signals ---------------------------------------------------------

#[test]
fn test_signals_verify_and_refuse_forged_stale_truncated_and_oversized() {
    let clock = Arc::new(ManualClock::new(1_750_000_000_000));
    let mut alice = common::memory_replica(1, &clock);
    let room = alice.create_room_opts("signals", &plain()).unwrap();
    let now = clock.now_millis();
    let signed = alice.signal(&room, SignalKind::Typing).unwrap();
    assert_eq!(signed.len(), SIGNAL_BYTES);
    let signal = Signal::verify(&signed, now).unwrap();
    assert_eq!(
        (signal.room, signal.author, signal.kind),
        (room, alice.author(), SignalKind::Typing)
    );
    // Stale (a replay after the freshness window) and from the future.
    assert!(Signal::verify(&signed, now + SIGNAL_FRESH_MILLIS + 1).is_err());
    assert!(Signal::verify(&signed, now - SIGNAL_FRESH_MILLIS - 1).is_err());
    assert!(Signal::verify(&signed, now + SIGNAL_FRESH_MILLIS).is_ok());
    // Truncated and oversized.
    for cut in 0..signed.len() {
        assert!(matches!(
            Signal::verify(&signed[..cut], now),
            Err(EnvelopeError::Decode(DecodeError::Truncated { .. }))
        ));
    }
    let mut long = signed.clone();
    long.push(0);
    assert!(matches!(
        Signal::verify(&long, now),
        Err(EnvelopeError::Decode(DecodeError::TooLarge { .. }))
    ));
    // Every single-bit flip is refused: no field is outside the signature.
    for i in 0..signed.len() * 8 {
        let mut forged = signed.clone();
        forged[i / 8] ^= 1 << (i % 8);
        assert!(Signal::verify(&forged, now).is_err(), "bit {i} flipped was accepted");
    }
    // A signal is not an envelope and an envelope is not a signal.
    assert!(Envelope::from_bytes(&signed).is_err());
    let post = alice.post(&room, Draft::text("hi")).unwrap();
    assert!(Signal::verify(post.delivery.envelope.as_bytes(), now).is_err());
    // Signing for a room the replica does not hold is refused.
    let stranger = RoomId::from_bytes([7; 32]);
    assert!(matches!(alice.signal(&stranger, SignalKind::Online), Err(Error::UnknownRoom(_))));
}

#[test]
fn test_random_signal_mutations_are_refused() {
    let clock = Arc::new(ManualClock::new(1_750_000_000_000));
    let mut alice = common::memory_replica(1, &clock);
    let room = alice.create_room_opts("signals", &plain()).unwrap();
    let now = clock.now_millis();
    let signed = alice.signal(&room, SignalKind::Online).unwrap();
    check(
        "test_random_signal_mutations_are_refused",
        10_000,
        false,
        (vec((0..SIGNAL_BYTES, any::<u8>()), 1..8), hostile_bytes()),
        |(edits, noise)| {
            let mut forged = signed.clone();
            for (at, byte) in edits {
                forged[at] = byte;
            }
            if forged != signed {
                prop_assert!(Signal::verify(&forged, now).is_err());
            }
            prop_assert!(Signal::verify(&noise, now).is_err());
            Ok(())
        },
    );
}

/// `count` posts by a new member of `host`'s open room (key `seed`), a
/// millisecond apart.
fn member_posts(
    seed: u8,
    count: usize,
    host: &Replica<MemoryStore>,
    room: &RoomId,
    clock: &Arc<ManualClock>,
) -> Vec<Delivery> {
    let mut member = common::memory_replica(seed, clock);
    common::join_quietly(&mut member, host, room);
    (0..count)
        .map(|i| {
            clock.advance(1);
            member.post(room, Draft::text(format!("junk {i}"))).unwrap().delivery
        })
        .collect()
}

/// Outcomes counted: (waiting, refused as `PendingFull`).
fn waits_and_refusals(outcomes: &[Result<Applied, EnvelopeError>]) -> (usize, usize) {
    let waiting = outcomes.iter().filter(|o| **o == Ok(Applied::Pending)).count();
    let full = outcomes.iter().filter(|o| **o == Err(EnvelopeError::PendingFull)).count();
    (waiting, full)
}

#[test]
fn test_what_waits_forever_is_capped_per_room_and_honest_envelopes_still_apply() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let open_bob = || {
        let store = concord_core::SledStore::open(dir.path()).unwrap();
        let mut bob = Replica::open_with_seed(store, clock.clone(), [2; 32]).unwrap();
        // A share of a quarter: one author may keep 20 waiting.
        bob.set_pending_limit(80, u64::MAX);
        bob
    };
    let mut alice = common::memory_replica(1, &clock);
    let room = alice.create_room_opts("open", &plain()).unwrap();
    let mut bob = open_bob();
    common::join(&mut bob, &mut alice, &room);
    // Mallory, a member of the open room, posts 41 messages; Bob is offered
    // all but the first, so they all wait for it, and may wait forever.
    let posts = member_posts(3, 41, &alice, &room, &clock);
    let outcomes = bob.apply(&room, posts[1..].to_vec()).unwrap();
    assert_eq!(waits_and_refusals(&outcomes), (20, 20));
    assert_eq!(bob.pending_use(&room).unwrap().0, 20);
    // Offering the same ones again changes nothing.
    let again = bob.apply(&room, posts[1..21].to_vec()).unwrap();
    assert_eq!(waits_and_refusals(&again), (20, 0));
    assert_eq!(bob.pending_use(&room).unwrap().0, 20);

    // An honest envelope in order still applies.
    clock.advance(1);
    let hello = alice.post(&room, Draft::text("hello")).unwrap();
    assert_eq!(bob.apply(&room, vec![hello.delivery]).unwrap(), vec![Ok(Applied::Applied)]);

    // The count survives a reopen (it is counted from the store).
    drop(bob);
    let mut bob = open_bob();
    let outcomes = bob.apply(&room, posts[21..].to_vec()).unwrap();
    assert_eq!(waits_and_refusals(&outcomes), (0, 20));
    assert_eq!(bob.pending_use(&room).unwrap().0, 20);

    // The gap fills: the twenty integrate, the room's pending empties, and
    // the refused ones, offered again, apply.
    assert_eq!(bob.apply(&room, vec![posts[0].clone()]).unwrap(), vec![Ok(Applied::Applied)]);
    assert_eq!(bob.pending_use(&room).unwrap(), (0, 0));
    assert_eq!(bob.snapshot(&room).unwrap().messages.len(), 22);
    let rest = bob.apply(&room, posts[21..].to_vec()).unwrap();
    assert!(rest.iter().all(|o| *o == Ok(Applied::Applied)), "{rest:?}");
    assert_eq!(bob.snapshot(&room).unwrap(), alice_and_mallory(&mut alice, &posts, &room));

    // The byte limit holds as well: an author's share has room for three
    // records, not four.
    let mut carol = common::memory_replica(4, &clock);
    common::join(&mut carol, &mut alice, &room);
    let record = posts[1].to_bytes().len() as u64 + 64;
    carol.set_pending_limit(usize::MAX, 4 * 3 * record);
    let outcomes = carol.apply(&room, posts[1..10].to_vec()).unwrap();
    assert_eq!(waits_and_refusals(&outcomes), (3, 6));
}

#[test]
fn test_one_key_fills_only_its_share_of_what_waits() {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let mut alice = common::memory_replica(1, &clock);
    let room = alice.create_room_opts("open", &plain()).unwrap();
    let mut bob = common::memory_replica(2, &clock);
    common::join(&mut bob, &mut alice, &room);
    bob.set_pending_limit(8, u64::MAX);
    assert_eq!(concord_core::PENDING_AUTHOR_SHARE, 4, "the numbers below assume a quarter");
    // Five keys each send three posts whose first never comes: each of the
    // first four gets two waiting (its quarter of eight), the fifth none
    // (the room's eight are taken).
    let mut firsts = Vec::new();
    for seed in 10..15u8 {
        let posts = member_posts(seed, 4, &alice, &room, &clock);
        let outcomes = bob.apply(&room, posts[1..].to_vec()).unwrap();
        let expected = if seed < 14 { (2, 1) } else { (0, 3) };
        assert_eq!(waits_and_refusals(&outcomes), expected, "key {seed}");
        firsts.push(posts[0].clone());
    }
    assert_eq!(bob.pending_use(&room).unwrap().0, 8);
    // An author's first post in order needs no waiting and applies.
    clock.advance(1);
    let hello = alice.post(&room, Draft::text("hello")).unwrap();
    assert_eq!(bob.apply(&room, vec![hello.delivery]).unwrap(), vec![Ok(Applied::Applied)]);
    // One gap filled frees that author's share: its waiting posts integrate.
    assert_eq!(bob.apply(&room, vec![firsts[0].clone()]).unwrap(), vec![Ok(Applied::Applied)]);
    assert_eq!(bob.pending_use(&room).unwrap().0, 6);
}

/// Alice's view once she holds Mallory's posts too.
fn alice_and_mallory(
    alice: &mut Replica<MemoryStore>,
    posts: &[Delivery],
    room: &RoomId,
) -> concord_core::RoomSnapshot {
    alice.apply(room, posts.to_vec()).unwrap();
    alice.snapshot(room).unwrap()
}
