//! Hostile bytes against the encryption formats: 10,000 seeded mutations
//! (bit flips, inserted and deleted bytes) of each of an encrypted blob, a
//! room key's plaintext and an Olm pre-key message, fed to the code that
//! reads them. Each must fail with a typed error or, where a byte of
//! vodozemac's framing has two spellings, give back exactly what was sent:
//! never a panic, never plaintext its author did not write. The seed is
//! printed; `CONCORD_SEED` replays it.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::megolm::{self, ContentKind, Outbound, RoomKeyContext};
use super::olm::DeviceCrypto;
use crate::ids::{AuthorId, MessageId, RoomId};
use crate::test_support::test_seed;

const CASES: usize = 10_000;

/// The room-key context these tests seal and open keys in.
pub(super) fn sample_context() -> RoomKeyContext {
    RoomKeyContext {
        room: RoomId::from_bytes([1; 32]),
        bucket: 7,
        sender: AuthorId::from_bytes([2; 32]),
        recipient: AuthorId::from_bytes([3; 32]),
    }
}

/// One to eight random edits of `bytes`; never the input unchanged.
pub(super) fn mutate(rng: &mut ChaCha8Rng, bytes: &[u8]) -> Vec<u8> {
    loop {
        let mut out = bytes.to_vec();
        for _ in 0..rng.random_range(1..=8) {
            match rng.random_range(0..3) {
                0 if !out.is_empty() => {
                    let i = rng.random_range(0..out.len());
                    out[i] ^= rng.random_range(1..=255u8);
                }
                1 => {
                    let i = rng.random_range(0..=out.len());
                    out.insert(i, rng.random());
                }
                _ if !out.is_empty() => {
                    let i = rng.random_range(0..out.len());
                    out.remove(i);
                }
                _ => {}
            }
        }
        if out != bytes {
            return out;
        }
    }
}

#[test]
fn test_mutated_encrypted_blobs_never_decrypt_to_other_content() {
    let mut rng = ChaCha8Rng::seed_from_u64(test_seed("mutated encrypted blobs"));
    let mut out = Outbound::generate().unwrap();
    let mut copy = out.inbound();
    let id = MessageId::from_bytes([9; 16]);
    let blob = out.encrypt(ContentKind::Body, &id, b"the only plaintext");
    let (mut refused, mut same) = (0, 0);
    for _ in 0..CASES {
        let bad = mutate(&mut rng, &blob);
        match copy.decrypt(&bad) {
            Ok(d) => {
                assert_eq!(
                    (d.kind, d.id, d.content.as_slice()),
                    (ContentKind::Body, id, &b"the only plaintext"[..])
                );
                same += 1;
            }
            Err(_) => refused += 1,
        }
        // The parse the relay-side code does (session and index) never panics either.
        let _ = megolm::blob_session(&bad);
    }
    println!("encrypted blobs: {refused} refused, {same} respellings of the original");
    assert!(refused >= CASES * 99 / 100, "only {refused} of {CASES} refused");
}

#[test]
fn test_mutated_room_keys_are_refused_or_unchanged() {
    let mut rng = ChaCha8Rng::seed_from_u64(test_seed("mutated room keys"));
    let mut out = Outbound::generate().unwrap();
    let exported = out.inbound().export_at(0).unwrap();
    let id = MessageId::from_bytes([4; 16]);
    let blob = out.encrypt(ContentKind::Body, &id, b"what the sender wrote");
    let context = sample_context();
    let plain = megolm::room_key(&context, &exported);
    assert_eq!(megolm::open_room_key(&plain, &context).unwrap(), exported);
    for _ in 0..CASES {
        let bad = mutate(&mut rng, &plain);
        if let Ok(key) = megolm::open_room_key(&bad, &context) {
            // The context is checked whole, so only the key bytes can have
            // changed. An exported Megolm key is not signed, so a changed
            // ratchet may still import under the session's id; every message
            // is signed by the session's key and MACed, so such a copy opens
            // nothing, or the same plaintext.
            if let Ok(mut session) = megolm::Inbound::import(&key) {
                if let Ok(d) = session.decrypt(&blob) {
                    assert_eq!(d.content, b"what the sender wrote");
                }
            }
        }
    }
    // Another room, bucket, sender or device: refused.
    for other in [
        RoomKeyContext { room: RoomId::from_bytes([9; 32]), ..context },
        RoomKeyContext { bucket: 8, ..context },
        RoomKeyContext { sender: AuthorId::from_bytes([9; 32]), ..context },
        RoomKeyContext { recipient: AuthorId::from_bytes([9; 32]), ..context },
    ] {
        assert!(megolm::open_room_key(&plain, &other).is_err());
    }
}

#[test]
fn test_mutated_pre_key_messages_open_to_nothing_else() {
    let mut rng = ChaCha8Rng::seed_from_u64(test_seed("mutated pre-key messages"));
    let alice = DeviceCrypto::generate().unwrap();
    let mut bob = DeviceCrypto::generate().unwrap();
    let sealed = alice.seal_to(&bob.keys(), b"a room key").unwrap();
    let sender = alice.keys().identity;
    let mut refused = 0;
    // Fewer cases: each attempt runs a triple Diffie-Hellman.
    for _ in 0..CASES / 5 {
        match bob.open_from(&sender, &mutate(&mut rng, &sealed)) {
            Ok(plain) => assert_eq!(plain, b"a room key"),
            Err(_) => refused += 1,
        }
    }
    assert!(refused >= CASES / 5 * 99 / 100, "only {refused} refused");
    // Bob still opens the real one: nothing above changed his account.
    assert_eq!(bob.open_from(&sender, &sealed).unwrap(), b"a room key");
}
