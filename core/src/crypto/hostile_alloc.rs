//! Allocation while the encryption formats decode hostile bytes: whatever
//! their length fields claim, no input makes the code that reads an
//! encrypted blob (`Inbound::decrypt`, `blob_session`), a room key
//! (`open_room_key`, `Inbound::import`), an Olm pre-key message
//! (`open_from`, and the peek at its sender that comes before it) or a
//! sealed value (`rest::open`) allocate more than the input plus
//! [`HEADROOM`], or for a Megolm decryption twice the input plus
//! [`HEADROOM`] ([`DECRYPT_TIMES`] says why). The integration test
//! `core/tests/hostile_alloc.rs` proves the same of the public decoders;
//! these are crate-private, so this is a unit test.
//!
//! How it measures. The crate's unit tests count allocations per thread
//! (`test_support`), so the other tests running in parallel do not pollute
//! the count. Each decode is measured on its own: the size of the largest
//! single allocation (or reallocation) it made. A self-check proves that
//! the probe sees a decoder that trusts a length prefix, and that it sees
//! nothing another thread allocates.
//!
//! The seeds are printed; `CONCORD_SEED=<n>` replays one.

use std::collections::BTreeMap;
use std::ops::Range;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vodozemac::olm::PreKeyMessage;

use super::hostile::{mutate, sample_context};
use super::megolm::{self, ContentKind, Inbound, Outbound};
use super::olm::{DeviceCrypto, MAX_PRE_KEY_MESSAGE_BYTES};
use super::rest;
use crate::base::DecodeError;
use crate::blob::MAX_WIRE_BLOB_BYTES;
use crate::ids::MessageId;
use crate::test_support::{largest_allocation, test_seed};

const CASES: usize = 10_000;
/// Largest random input, as in the integration test.
const MAX_INPUT: usize = 70 * 1024;
/// What a decode may allocate beyond its input's length (times
/// [`DECRYPT_TIMES`] for a Megolm decryption). Measured: at most 238 bytes
/// over (opening an Olm pre-key message); 4 KiB leaves room for vodozemac's
/// fixed-size state to grow, and is far below what any length field can
/// claim that the decoders refuse (the smallest, a room key's exported key
/// just over its 512-byte cap, is refused; u16 and varint claims reach
/// 64 KiB to 16 EiB).
const HEADROOM: usize = 4 * 1024;
/// A Megolm decryption allocates up to twice its input: vodozemac checks a
/// message's signature over the message encoded again, in a vector of the
/// exact size that then grows by doubling for the MAC (`MegolmMessage::
/// to_signature_bytes`). Proportional to the input, which the delivery
/// decoder caps at `MAX_WIRE_BLOB_BYTES`, so never what a length claims.
const DECRYPT_TIMES: usize = 2;
/// An encrypted blob's header: magic, version, session id.
const BLOB_HEADER: usize = 37;
/// A Megolm message's MAC and signature, after its protobuf fields.
const MEGOLM_SUFFIX: usize = 8 + 64;
/// An Olm message's MAC, after its protobuf fields.
const OLM_MAC: usize = 8;
/// Offset of a room key's exported-key length (`megolm.rs`, Formats).
const ROOM_KEY_LEN_AT: usize = 4 + 1 + 32 + 4 + 32 + 32;

/// Per decoder: the largest allocation seen, and the most one was over
/// its input (times [`DECRYPT_TIMES`] for a decryption), which is what the
/// headroom must cover.
struct Worst {
    seed: u64,
    seen: BTreeMap<&'static str, (usize, usize)>,
}

impl Worst {
    fn new(seed: u64) -> Self {
        Self { seed, seen: BTreeMap::new() }
    }

    /// Runs `decode` of `input`, measured, and asserts that its largest
    /// allocation was at most `times` the input plus the headroom.
    fn measure<T>(
        &mut self,
        decoder: &'static str,
        times: usize,
        case: usize,
        input: &[u8],
        decode: impl FnOnce() -> T,
    ) -> T {
        let (out, grew) = largest_allocation(decode);
        assert!(
            grew <= times * input.len() + HEADROOM,
            "{decoder} of case {case} (seed {}; {} bytes, starting {:02x?}) made a {grew}-byte \
             allocation, more than {times} x input + {HEADROOM}",
            self.seed,
            input.len(),
            &input[..input.len().min(16)],
        );
        let (largest, over) = self.seen.entry(decoder).or_default();
        *largest = (*largest).max(grew);
        *over = (*over).max(grew.saturating_sub(times * input.len()));
        out
    }

    fn report(&self) {
        for (decoder, (largest, over)) in &self.seen {
            println!(
                "{decoder}: largest single allocation {largest} bytes, at most {over} bytes \
                 over its input's share of the bound (headroom {HEADROOM})"
            );
        }
    }
}

/// How many decodes ended which way, to show the inputs reached the checks.
#[derive(Default)]
struct Outcomes(BTreeMap<&'static str, usize>);

impl Outcomes {
    fn count<T>(&mut self, result: &Result<T, DecodeError>) {
        let kind = match result {
            Ok(_) => "ok",
            Err(DecodeError::TooLarge { .. }) => "too large",
            Err(DecodeError::Truncated { .. }) => "truncated",
            Err(DecodeError::BadMagic { .. }) => "bad magic",
            Err(DecodeError::UnsupportedVersion(_)) => "version",
            Err(DecodeError::TrailingBytes(_)) => "trailing bytes",
            Err(DecodeError::InvalidValue(what)) => what,
        };
        *self.0.entry(kind).or_default() += 1;
    }

    fn saw(&self, kind: &str) -> bool {
        self.0.get(kind).is_some_and(|&n| n > 0)
    }
}

/// A varint of a protobuf message (an integer or a length): where it sits
/// and how many bytes it takes, and for a length, the bytes it prefixes.
struct Varint {
    at: usize,
    len: usize,
    payload: Option<Range<usize>>,
}

fn read_varint(bytes: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for i in 0..10 {
        let b = *bytes.get(at + i)?;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
    out
}

/// The integer and length varints of the protobuf message in `bytes[range]`,
/// which vodozemac's formats carry between a version byte and their MACs.
fn varints(bytes: &[u8], range: Range<usize>) -> Vec<Varint> {
    let mut out = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let Some((key, n)) = read_varint(bytes, at) else { break };
        at += n;
        let Some((value, len)) = read_varint(bytes, at) else { break };
        match key & 7 {
            0 => {
                out.push(Varint { at, len, payload: None });
                at += len;
            }
            2 => {
                let start = at + len;
                let end = start + value as usize;
                out.push(Varint { at, len, payload: Some(start..end) });
                at = end;
            }
            _ => break,
        }
    }
    out
}

/// A value an attacker would put in a varint: the largest a varint holds,
/// the 4 GiB and 2 GiB marks, just over the largest wire blob, anything,
/// or a varint that never ends.
fn hostile_varint(rng: &mut ChaCha8Rng) -> Vec<u8> {
    match rng.random_range(0..7) {
        0 => varint(u64::MAX),
        1 => varint(u64::from(u32::MAX)),
        2 => varint(1 << 31),
        3 => varint(MAX_WIRE_BLOB_BYTES as u64 + 1),
        4 => varint(rng.random_range(0..=2 * MAX_INPUT as u64)),
        5 => vec![0xff; 11],
        _ => varint(rng.random()),
    }
}

fn random_bytes(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill(&mut out[..]);
    out
}

/// Keeps `bytes` as they are, cuts them short, or pads them with random
/// bytes up to `max` bytes.
fn resize_randomly(rng: &mut ChaCha8Rng, mut bytes: Vec<u8>, max: usize) -> Vec<u8> {
    match rng.random_range(0..3) {
        0 => {}
        1 => bytes.truncate(rng.random_range(0..bytes.len().max(1))),
        _ => {
            let len = rng.random_range(bytes.len()..=max.max(bytes.len()));
            let extra = random_bytes(rng, len - bytes.len());
            bytes.extend_from_slice(&extra);
        }
    }
    bytes
}

/// `bytes` with one to three of its `fields` rewritten to hostile values,
/// then perhaps cut short or padded up to `max` bytes.
fn claim(rng: &mut ChaCha8Rng, bytes: &[u8], fields: &[Varint], max: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let n = rng.random_range(1..=fields.len().min(3));
    let mut picked: Vec<&Varint> = fields.choose_multiple(rng, n).collect();
    // From the last backwards, so the earlier offsets still hold.
    picked.sort_by_key(|f| std::cmp::Reverse(f.at));
    for f in picked {
        let value = hostile_varint(rng);
        out.splice(f.at..f.at + f.len, value);
    }
    resize_randomly(rng, out, max)
}

#[test]
fn test_the_probe_sees_a_trusted_length_prefix_and_no_other_thread() {
    // A decoder that reserved what its length prefix claims, given a short
    // input claiming just over the largest input's bound: caught.
    let claimed = (MAX_INPUT + HEADROOM + 1) as u32;
    let input = claimed.to_be_bytes();
    let trusting = |bytes: &[u8; 4]| Vec::<u8>::with_capacity(u32::from_be_bytes(*bytes) as usize);
    let (_, grew) = largest_allocation(|| trusting(&input));
    assert!(grew >= claimed as usize, "the probe missed a {claimed}-byte allocation ({grew})");
    assert!(grew > input.len() + HEADROOM);
    // What another thread allocates meanwhile is not counted: the parallel
    // tests of this binary do not pollute a measurement.
    let (_, grew) = largest_allocation(|| {
        std::thread::spawn(|| Vec::<u8>::with_capacity(8 << 20).capacity()).join()
    });
    assert!(grew < 64 * 1024, "another thread's 8 MiB allocation was counted here ({grew})");
}

#[test]
fn test_hostile_encrypted_blobs_allocate_at_most_twice_their_length_plus_headroom() {
    let seed =
        test_seed("test_hostile_encrypted_blobs_allocate_at_most_twice_their_length_plus_headroom");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Outbound::generate().unwrap();
    let mut copy = out.inbound();
    // Real blobs, from empty to a whole input.
    let sizes = [0, 5, 1000, 40 * 1024, MAX_INPUT - megolm::ENCRYPTED_BLOB_OVERHEAD];
    let blobs: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(n, &len)| {
            let content = random_bytes(&mut rng, len);
            out.encrypt(ContentKind::Body, &MessageId::from_bytes([n as u8; 16]), &content)
        })
        .collect();
    // The message index and the ciphertext's length.
    let fields: Vec<Vec<Varint>> =
        blobs.iter().map(|b| varints(b, BLOB_HEADER + 1..b.len() - MEGOLM_SUFFIX)).collect();
    assert!(fields.iter().all(|f| f.len() == 2 && f[1].payload.is_some()));
    let mut worst = Worst::new(seed);
    let mut outcomes = Outcomes::default();

    // A short blob whose ciphertext claims 16 EiB, 4 GiB or just over the
    // largest wire blob: refused by the protobuf decoder, which checks a
    // length against the bytes left before it copies anything.
    for claimed in [u64::MAX, u64::from(u32::MAX), MAX_WIRE_BLOB_BYTES as u64 + 1] {
        let at = fields[1][1].at;
        let input = [&blobs[1][..at], &varint(claimed), &[0u8; 100]].concat();
        let result =
            worst.measure("Inbound::decrypt", DECRYPT_TIMES, 0, &input, || copy.decrypt(&input));
        assert!(
            matches!(result, Err(DecodeError::InvalidValue("megolm message"))),
            "a ciphertext claiming {claimed} bytes: {result:?}"
        );
    }

    for case in 0..CASES {
        let which = rng.random_range(0..blobs.len());
        let input = match rng.random_range(0..4) {
            0 => mutate(&mut rng, &blobs[which]),
            1 | 2 => claim(&mut rng, &blobs[which], &fields[which], MAX_INPUT),
            // Noise behind this session's header and a Megolm version.
            _ => {
                let len = rng.random_range(0..=MAX_INPUT - BLOB_HEADER - 1);
                let noise = random_bytes(&mut rng, len);
                [&blobs[0][..BLOB_HEADER + 1], &noise[..]].concat()
            }
        };
        let result = worst.measure("Inbound::decrypt", DECRYPT_TIMES, case, &input, || {
            copy.decrypt(&input).map(drop)
        });
        outcomes.count(&result);
        let result =
            worst.measure("blob_session", 1, case, &input, || megolm::blob_session(&input));
        outcomes.count(&result);
    }
    worst.report();
    println!("encrypted blobs: outcomes {:?}", outcomes.0);
    for kind in ["megolm message", "encrypted blob does not decrypt", "truncated"] {
        assert!(outcomes.saw(kind), "no hostile blob ended as {kind:?}: {:?}", outcomes.0);
    }
}

#[test]
fn test_hostile_room_keys_allocate_at_most_input_plus_headroom() {
    let seed = test_seed("test_hostile_room_keys_allocate_at_most_input_plus_headroom");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let out = Outbound::generate().unwrap();
    let exported = out.inbound().export_at(0).unwrap();
    let context = sample_context();
    let plain = megolm::room_key(&context, &exported);
    assert_eq!(
        u16::from_be_bytes([plain[ROOM_KEY_LEN_AT], plain[ROOM_KEY_LEN_AT + 1]]) as usize,
        exported.len()
    );
    let mut worst = Worst::new(seed);
    let (mut keys, mut imports) = (Outcomes::default(), Outcomes::default());

    // An exported key claiming 64 KiB in a short room key: refused by its cap.
    let mut input = plain[..ROOM_KEY_LEN_AT].to_vec();
    input.extend_from_slice(&u16::MAX.to_be_bytes());
    input.extend_from_slice(&[0u8; 100]);
    let result =
        worst.measure("open_room_key", 1, 0, &input, || megolm::open_room_key(&input, &context));
    assert!(
        matches!(result, Err(DecodeError::TooLarge { len: 0xffff, .. })),
        "a 64 KiB exported key: {result:?}"
    );

    for case in 0..CASES {
        let input = match rng.random_range(0..3) {
            0 => mutate(&mut rng, &plain),
            // The exported key's length: the largest a u16 says, just over
            // the cap, at the cap (more than the input holds), or anything.
            1 => {
                let len: u16 = match rng.random_range(0..4) {
                    0 => u16::MAX,
                    1 => 513,
                    2 => 512,
                    _ => rng.random(),
                };
                let mut bytes = plain.clone();
                bytes[ROOM_KEY_LEN_AT..ROOM_KEY_LEN_AT + 2].copy_from_slice(&len.to_be_bytes());
                resize_randomly(&mut rng, bytes, MAX_INPUT)
            }
            _ => {
                let len = rng.random_range(0..=MAX_INPUT - ROOM_KEY_LEN_AT);
                [&plain[..ROOM_KEY_LEN_AT], &random_bytes(&mut rng, len)[..]].concat()
            }
        };
        let result = worst
            .measure("open_room_key", 1, case, &input, || megolm::open_room_key(&input, &context));
        keys.count(&result);
        // What a room key carries next: the exported session, as opened or
        // mutated.
        let key = match result {
            Ok(key) if rng.random_bool(0.5) => key,
            _ => mutate(&mut rng, &exported),
        };
        let result = worst.measure("Inbound::import", 1, case, &key, || Inbound::import(&key));
        imports.count(&result.map(drop));
    }
    worst.report();
    println!("room keys: outcomes {:?}", keys.0);
    println!("room keys: imports {:?}", imports.0);
    for kind in ["too large", "truncated", "trailing bytes"] {
        assert!(keys.saw(kind), "no hostile room key ended as {kind:?}: {:?}", keys.0);
    }
    assert!(imports.saw("exported session key"), "imports {:?}", imports.0);
}

#[test]
fn test_hostile_pre_key_messages_allocate_at_most_input_plus_headroom() {
    let seed = test_seed("test_hostile_pre_key_messages_allocate_at_most_input_plus_headroom");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let alice = DeviceCrypto::generate().unwrap();
    let mut bob = DeviceCrypto::generate().unwrap();
    let sender = alice.keys().identity;
    // A pre-key message the size of a real share: a room key.
    let context = sample_context();
    let exported = Outbound::generate().unwrap().inbound().export_at(0).unwrap();
    let sealed = alice.seal_to(&bob.keys(), &megolm::room_key(&context, &exported)).unwrap();
    // The three keys' lengths and the Olm message's, then within that
    // message its ratchet key's length, its chain index and its
    // ciphertext's length.
    let mut fields = varints(&sealed, 1..sealed.len());
    let message = fields.last().and_then(|f| f.payload.clone()).unwrap();
    fields.extend(varints(&sealed, message.start + 1..message.end - OLM_MAC));
    assert_eq!(fields.len(), 7);
    let mut worst = Worst::new(seed);
    let (mut opened, mut peeked) = (Outcomes::default(), Outcomes::default());

    // Each length field in turn claiming 16 EiB or 4 GiB of a short
    // message: refused, by vodozemac's protobuf decoder, as no pre-key
    // message.
    for (n, field) in fields.iter().enumerate().filter(|(_, f)| f.payload.is_some()) {
        for claimed in [u64::MAX, u64::from(u32::MAX)] {
            let input = [&sealed[..field.at], &varint(claimed), &[0u8; 100]].concat();
            let result = worst.measure("DeviceCrypto::open_from", 1, n, &input, || {
                bob.open_from(&sender, &input)
            });
            assert!(
                matches!(result, Err(DecodeError::InvalidValue("pre-key message"))),
                "field {n} claiming {claimed} bytes: {result:?}"
            );
        }
    }

    // Each open runs a triple Diffie-Hellman: fewer cases.
    for case in 0..CASES / 5 {
        let input = match rng.random_range(0..4) {
            0 => mutate(&mut rng, &sealed),
            1 | 2 => claim(&mut rng, &sealed, &fields, MAX_PRE_KEY_MESSAGE_BYTES + 256),
            // Noise behind the pre-key version, up to the largest input: the
            // replica reads the sender of a share of any size.
            _ => {
                let len = rng.random_range(0..MAX_INPUT);
                [&[3u8][..], &random_bytes(&mut rng, len)].concat()
            }
        };
        // The replica peeks at the sender before it opens a share.
        let result = worst.measure("PreKeyMessage::from_bytes", 1, case, &input, || {
            PreKeyMessage::from_bytes(&input).map(drop)
        });
        peeked.count(&result.map_err(|_| DecodeError::InvalidValue("pre-key message")));
        let result = worst
            .measure("DeviceCrypto::open_from", 1, case, &input, || bob.open_from(&sender, &input));
        opened.count(&result);
    }
    worst.report();
    println!("pre-key messages: outcomes {:?}", opened.0);
    println!("pre-key messages: sender peeks {:?}", peeked.0);
    for kind in ["too large", "pre-key message", "pre-key message does not decrypt"] {
        assert!(opened.saw(kind), "no hostile pre-key message ended as {kind:?}: {:?}", opened.0);
    }
    // Bob still opens the real one.
    assert!(bob.open_from(&sender, &sealed).is_ok());
}

#[test]
fn test_hostile_sealed_values_allocate_at_most_input_plus_headroom() {
    let seed = test_seed("test_hostile_sealed_values_allocate_at_most_input_plus_headroom");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let key = rest::random_key().unwrap();
    let aad = b"blobs-2\0room|hash";
    let sealed: Vec<Vec<u8>> = [0, 32, 1000, MAX_INPUT - rest::SEAL_OVERHEAD]
        .iter()
        .map(|&len| rest::seal(&key, aad, &random_bytes(&mut rng, len)).unwrap())
        .collect();
    let mut worst = Worst::new(seed);
    let mut outcomes = Outcomes::default();
    for case in 0..CASES {
        let which = sealed.choose(&mut rng).unwrap();
        let input = match rng.random_range(0..3) {
            0 => mutate(&mut rng, which),
            1 => resize_randomly(&mut rng, which.clone(), MAX_INPUT),
            _ => {
                let len = rng.random_range(0..=MAX_INPUT);
                random_bytes(&mut rng, len)
            }
        };
        let result = worst.measure("rest::open", 1, case, &input, || rest::open(&key, aad, &input));
        outcomes.count(&result);
    }
    worst.report();
    println!("sealed values: outcomes {:?}", outcomes.0);
    for kind in ["truncated", "sealed value does not open"] {
        assert!(outcomes.saw(kind), "no hostile sealed value ended as {kind:?}: {:?}", outcomes.0);
    }
}
