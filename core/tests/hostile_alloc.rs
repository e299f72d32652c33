//! Allocation while decoding hostile bytes: whatever its length prefixes
//! claim, no input makes `Envelope::from_bytes`, `Genesis::from_bytes`,
//! `Delivery::from_bytes` or `SyncMessage::from_bytes` allocate much more
//! than the input itself. This is
//! its own test binary with a single test, because it measures the whole
//! process and nothing else may allocate while it does.
//!
//! How it measures. A counting `#[global_allocator]` records the size of the
//! largest single allocation (or reallocation) made while a decode runs. The
//! test also checks that the probe sees: at the end it asserts that a
//! deliberate over-allocation is caught.
//!
//! The seed is printed; `CONCORD_SEED=<n>` replays another one.

mod common;

use std::hint::black_box;
use std::sync::Arc;

use concord_core::{
    Clock, DecodeError, Delivery, Draft, Envelope, EnvelopeError, Genesis, ManualClock,
    SyncMessage, MAX_BLOB_BYTES, MAX_ENVELOPE_BYTES, MAX_UPDATE_BYTES,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CASES: usize = 10_000;
/// Largest random input.
const MAX_INPUT: usize = 70 * 1024;
/// What a decode may allocate beyond the input's own length.
const HEADROOM: u64 = 64 * 1024;
/// Offset of an envelope's update length (docs/protocol.md).
const UPDATE_LEN_AT: usize = 97;

/// Counts the largest single allocation since the last reset. This test
/// binary runs one test, so nothing else allocates while a decode is measured.
#[allow(unsafe_code)]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub static LARGEST: AtomicUsize = AtomicUsize::new(0);

    pub struct Counting;

    // SAFETY: every call is forwarded unchanged to the system allocator; the
    // wrapper only records sizes.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// What one measured call allocated.
#[derive(Clone, Copy, Debug)]
struct Growth {
    /// The largest single allocation while the call ran.
    grew: u64,
    /// Allocations this probe cannot see: none, it counts every one.
    blind: u64,
}

fn measure<T>(f: impl FnOnce() -> T) -> (T, Growth) {
    counting::LARGEST.store(0, std::sync::atomic::Ordering::SeqCst);
    let out = black_box(f());
    let grew = counting::LARGEST.load(std::sync::atomic::Ordering::SeqCst) as u64;
    (out, Growth { grew, blind: 0 })
}

/// Tallies of decode outcomes, to show the inputs reached every check.
#[derive(Default, Debug)]
struct Outcomes {
    ok: usize,
    too_large: usize,
    truncated: usize,
    signature: usize,
    other: usize,
}

impl Outcomes {
    fn count<T>(&mut self, result: &Result<T, EnvelopeError>) {
        match result {
            Ok(_) => self.ok += 1,
            Err(EnvelopeError::Decode(DecodeError::TooLarge { .. })) => self.too_large += 1,
            Err(EnvelopeError::Decode(DecodeError::Truncated { .. })) => self.truncated += 1,
            Err(EnvelopeError::BadSignature | EnvelopeError::BadAuthorKey) => self.signature += 1,
            Err(_) => self.other += 1,
        }
    }
}

/// Real encodings for the generator to corrupt: an envelope, a genesis, and a
/// delivery with a body and a 40 KiB attachment.
struct Samples {
    envelope: Vec<u8>,
    genesis: Vec<u8>,
    delivery: Vec<u8>,
    /// Sync messages of a real catch-up (digests, versions, deliveries).
    sync: Vec<Vec<u8>>,
}

fn samples() -> Samples {
    let clock = Arc::new(ManualClock::new(common::EPOCH_MILLIS));
    let mut alice = common::memory_replica(1, &clock);
    let room = alice.create_room("allocation").unwrap();
    let post = alice
        .post(
            &room,
            Draft {
                text: "hello".into(),
                attachments: vec![vec![0xAB; 40 * 1024]],
                ..Draft::default()
            },
        )
        .unwrap();
    let mut bob = common::memory_replica(2, &clock);
    common::join(&mut bob, &mut alice, &room);
    bob.post(&room, Draft::text("from bob")).unwrap();
    let sync = common::sync_pair(&mut bob, &mut alice, &room, clock.now_millis()).transcript;
    Samples {
        envelope: post.delivery.envelope.as_bytes().to_vec(),
        genesis: alice.genesis(&room).unwrap().as_bytes().to_vec(),
        delivery: post.delivery.to_bytes(),
        sync,
    }
}

/// A length prefix an attacker would pick: the 4 GiB maximum, just over or at
/// a cap, or anything.
fn hostile_len(rng: &mut ChaCha8Rng) -> u32 {
    match rng.random_range(0..6) {
        0 => u32::MAX,
        1 => 0x8000_0000,
        2 => (MAX_BLOB_BYTES + 16) as u32,
        3 => MAX_ENVELOPE_BYTES as u32 + rng.random_range(0..2),
        4 => MAX_UPDATE_BYTES as u32 + rng.random_range(0..2),
        _ => rng.random(),
    }
}

fn random_bytes(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill(&mut out[..]);
    out
}

/// Keeps `bytes` as they are, cuts them short, or pads them with random bytes
/// up to the largest input.
fn resize_randomly(rng: &mut ChaCha8Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    match rng.random_range(0..3) {
        0 => {}
        1 => bytes.truncate(rng.random_range(0..bytes.len().max(1))),
        _ => {
            let len = rng.random_range(bytes.len()..=MAX_INPUT.max(bytes.len()));
            let extra = random_bytes(rng, len - bytes.len());
            bytes.extend_from_slice(&extra);
        }
    }
    bytes
}

/// One hostile input of up to `MAX_INPUT` bytes.
fn hostile_input(rng: &mut ChaCha8Rng, s: &Samples) -> Vec<u8> {
    match rng.random_range(0..5) {
        // Noise, mostly short.
        0 => {
            let len = if rng.random_bool(0.5) {
                rng.random_range(0..256)
            } else {
                rng.random_range(0..=MAX_INPUT)
            };
            random_bytes(rng, len)
        }
        // Noise behind a valid magic and version.
        1 => {
            let head: &[u8] = [&b"CNCE\x01"[..], b"CNCG\x01", b"CNCD\x01"][rng.random_range(0..3)];
            let len = rng.random_range(0..=MAX_INPUT - 5);
            let tail = random_bytes(rng, len);
            [head, &tail[..]].concat()
        }
        // A real encoding with 32-bit fields overwritten by hostile lengths.
        2 => {
            let mut bytes = match rng.random_range(0..3) {
                0 => s.envelope.clone(),
                1 => s.genesis.clone(),
                _ => s.delivery.clone(),
            };
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len() - 4);
                bytes[at..at + 4].copy_from_slice(&hostile_len(rng).to_be_bytes());
            }
            resize_randomly(rng, bytes)
        }
        // A delivery around the real envelope whose blobs claim hostile lengths.
        3 => {
            let mut bytes = b"CNCD\x01".to_vec();
            let envelope_len =
                if rng.random_bool(0.8) { s.envelope.len() as u32 } else { hostile_len(rng) };
            bytes.extend_from_slice(&envelope_len.to_be_bytes());
            bytes.extend_from_slice(&s.envelope);
            let count: u16 =
                if rng.random_bool(0.8) { rng.random_range(0..=17) } else { rng.random() };
            bytes.extend_from_slice(&count.to_be_bytes());
            for _ in 0..rng.random_range(0..=count.min(17)) {
                bytes.extend_from_slice(&hostile_len(rng).to_be_bytes());
                let len = rng.random_range(0..64);
                let filler = random_bytes(rng, len);
                bytes.extend_from_slice(&filler);
            }
            resize_randomly(rng, bytes)
        }
        // The real envelope's header, then a hostile update length.
        _ => {
            let mut bytes = s.envelope[..UPDATE_LEN_AT].to_vec();
            bytes.extend_from_slice(&hostile_len(rng).to_be_bytes());
            resize_randomly(rng, bytes)
        }
    }
}

/// Decodes `input` with all three decoders, each measured on its own, and
/// asserts the bound; returns the three results for the caller to judge.
fn decode_all(
    input: &[u8],
    what: &str,
    worst: &mut (u64, u64),
    tallies: &mut [Outcomes; 3],
) -> [Result<(), EnvelopeError>; 3] {
    let bound = input.len() as u64 + HEADROOM;
    let (envelope, a) = measure(|| Envelope::from_bytes(input).map(drop));
    let (genesis, b) = measure(|| Genesis::from_bytes(input).map(drop));
    let (delivery, c) = measure(|| Delivery::from_bytes(input).map(drop));
    for (decoder, g) in [("Envelope", a), ("Genesis", b), ("Delivery", c)] {
        assert!(
            g.grew <= bound,
            "{decoder}::from_bytes of {what} ({} bytes, starting {:02x?}) made a {} KiB \
             allocation, more than input + 64 KiB",
            input.len(),
            &input[..input.len().min(16)],
            g.grew >> 10,
        );
        worst.0 = worst.0.max(g.grew);
        worst.1 = worst.1.max(g.blind);
    }
    tallies[0].count(&envelope);
    tallies[1].count(&genesis);
    tallies[2].count(&delivery);
    [envelope, genesis, delivery]
}

#[test]
fn test_decoders_allocate_at_most_input_plus_64_kib() {
    let seed = common::test_seed("test_decoders_allocate_at_most_input_plus_64_kib");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let s = samples();
    let mut worst = (0u64, 0u64);
    let mut tallies: [Outcomes; 3] = Default::default();

    // Deliberately crafted 0xFFFF_FFFF length prefixes in short inputs: each
    // is refused as TooLarge, and within the bound.
    let mut update_claim = s.envelope[..UPDATE_LEN_AT].to_vec();
    update_claim.extend_from_slice(&u32::MAX.to_be_bytes());
    update_claim.extend_from_slice(&[0u8; 100]);
    let mut envelope_claim = b"CNCD\x01".to_vec();
    envelope_claim.extend_from_slice(&u32::MAX.to_be_bytes());
    envelope_claim.extend_from_slice(&[0u8; 100]);
    let mut blob_claim = b"CNCD\x01".to_vec();
    blob_claim.extend_from_slice(&(s.envelope.len() as u32).to_be_bytes());
    blob_claim.extend_from_slice(&s.envelope);
    blob_claim.extend_from_slice(&1u16.to_be_bytes());
    blob_claim.extend_from_slice(&u32::MAX.to_be_bytes());
    blob_claim.extend_from_slice(&[0u8; 100]);
    let crafted =
        [(&update_claim, 0, "update"), (&envelope_claim, 2, "envelope"), (&blob_claim, 2, "blob")];
    for (input, decoder, field) in crafted {
        let results = decode_all(input, "a crafted 0xFFFF_FFFF prefix", &mut worst, &mut tallies);
        assert!(
            matches!(
                &results[decoder],
                Err(EnvelopeError::Decode(DecodeError::TooLarge { what, len, .. }))
                    if *what == field && *len == u32::MAX as usize
            ),
            "a 4 GiB {field} length was not refused as TooLarge: {:?}",
            results[decoder]
        );
    }
    // Sixteen blobs each claiming the largest allowed size in a short input.
    let mut blobs_claim = blob_claim[..blob_claim.len() - 106].to_vec();
    blobs_claim.extend_from_slice(&16u16.to_be_bytes());
    for _ in 0..16 {
        blobs_claim.extend_from_slice(&((MAX_BLOB_BYTES + 16) as u32).to_be_bytes());
        blobs_claim.extend_from_slice(&[0u8; 20]);
    }
    let results = decode_all(&blobs_claim, "sixteen 1 MiB blob claims", &mut worst, &mut tallies);
    assert!(results[2].is_err());

    for case in 0..CASES {
        let input = hostile_input(&mut rng, &s);
        let _ = decode_all(&input, &format!("case {case} (seed {seed})"), &mut worst, &mut tallies);
    }
    println!(
        "largest single allocation {} KiB, unseen allocations {} KiB; outcomes (envelope, genesis, delivery): {:?}",
        worst.0 >> 10,
        worst.1 >> 10,
        tallies
    );
    // The inputs reached the checks this test is about: the caps, the bounds
    // checks on reads, and (for the real encodings) the signature.
    for (decoder, t) in ["envelope", "genesis", "delivery"].iter().zip(&tallies) {
        assert!(t.too_large > 0 && t.truncated > 0, "{decoder}: inputs never hit a cap: {t:?}");
        assert!(
            t.signature > 0 || t.ok > 0,
            "{decoder}: inputs never reached the signature: {t:?}"
        );
    }

    // Sync messages: noise behind the sync header, and real messages of a
    // catch-up with 32-bit fields overwritten by hostile lengths and counts.
    let mut sync = Outcomes::default();
    for case in 0..CASES {
        let input = if rng.random_bool(0.3) {
            let len = rng.random_range(0..=MAX_INPUT - 5);
            [&b"CNCS\x01"[..], &random_bytes(&mut rng, len)].concat()
        } else {
            let mut bytes = s.sync[rng.random_range(0..s.sync.len())].clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len() - 4);
                bytes[at..at + 4].copy_from_slice(&hostile_len(&mut rng).to_be_bytes());
            }
            resize_randomly(&mut rng, bytes)
        };
        let (result, g) = measure(|| SyncMessage::from_bytes(&input).map(drop));
        assert!(
            g.grew <= input.len() as u64 + HEADROOM,
            "SyncMessage::from_bytes of case {case} (seed {seed}, {} bytes) made a {} KiB allocation",
            input.len(),
            g.grew >> 10
        );
        worst.0 = worst.0.max(g.grew);
        sync.count(&result.map_err(EnvelopeError::Decode));
    }
    println!("sync message outcomes: {sync:?}");
    assert!(sync.too_large > 0 && sync.truncated > 0, "sync inputs never hit a cap: {sync:?}");

    // The probe is not blind: a decoder that reserved what a prefix claims
    // (here, the largest input's bound and then some) would have been caught.
    let claim = MAX_INPUT + HEADROOM as usize + 512 * 1024;
    let (_, g) = measure(|| Vec::<u8>::with_capacity(claim));
    assert!(
        g.grew >= claim as u64,
        "the probe missed a {} KiB allocation ({g:?}); this test cannot see allocations here",
        claim >> 10
    );
}
