//! Signed envelopes: the unit that is gossiped, synced, stored and relayed.
//!
//! Two kinds exist. A [`Genesis`] founds a room; the room id is its hash. An
//! [`Envelope`] carries one yrs update of one author's document in one bucket
//! of one room. A [`Delivery`] bundles an envelope with the blobs it names that
//! still exist. Byte layouts are in `docs/protocol.md`; any change here must
//! change that file and bump the version byte.
//!
//! Decoding verifies: a value of these types exists only if its bytes were
//! well formed, within every size cap, and correctly signed by its author.

use crate::base::{
    DecodeError, GovHead, FORMAT_VERSION, GENESIS_FORMAT_VERSION, MAX_CITED_HEADS,
    MAX_ROOM_NAME_BYTES, ROOM_FORMAT_VERSION,
};
use crate::blob::{self, BLOB_NONCE_LEN, MAX_WIRE_BLOB_BYTES};
use crate::codec::{check_header, check_versioned_header, Reader, Writer};
use crate::error::EnvelopeError;
use crate::ids::{AuthorId, BlobHash, Hlc, RoomId};
use crate::keys::{self, DeviceKey};

const GENESIS_MAGIC: &[u8; 4] = b"CNCG";
const ENVELOPE_MAGIC: &[u8; 4] = b"CNCE";
const DELIVERY_MAGIC: &[u8; 4] = b"CNCD";

/// Largest encoded envelope. Gossipsub caps messages at 64 KiB; this leaves
/// room for its framing so every envelope can be gossiped whole.
pub const MAX_ENVELOPE_BYTES: usize = 60 * 1024;

/// Largest yrs update inside an envelope (the envelope cap less its header).
pub const MAX_UPDATE_BYTES: usize = MAX_ENVELOPE_BYTES - 1024;

/// Most blob hashes one envelope may name (a body and 15 attachments).
pub const MAX_BLOBS_PER_ENVELOPE: usize = 16;

/// Largest encoded delivery: one envelope and its largest blobs.
pub const MAX_DELIVERY_BYTES: usize =
    4 + 1 + 4 + MAX_ENVELOPE_BYTES + 2 + MAX_BLOBS_PER_ENVELOPE * (4 + MAX_WIRE_BLOB_BYTES);

const SIGNATURE_LEN: usize = 64;

/// Envelopes in one [`Envelope::from_bytes_many`] call from which their
/// verification is spread over the cores: below it, starting threads costs
/// more than it saves (one verification takes tens of microseconds).
pub const PARALLEL_VERIFY_MIN: usize = 64;

fn check_len(bytes: &[u8], max: usize, what: &'static str) -> Result<(), DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge { what, len: bytes.len(), max });
    }
    Ok(())
}

/// The signed founding record of a room. The room id is the blake3 hash of
/// its encoding, so nobody can claim an id for a genesis they did not sign.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Genesis {
    creator: AuthorId,
    hlc: Hlc,
    name: String,
    open: bool,
    encrypted: bool,
    bytes: Vec<u8>,
}

/// Genesis flag: anyone who is not banned may post (an open room), rather
/// than members only.
const GENESIS_OPEN: u8 = 1;
/// Genesis flag (format 3): the room's content is end-to-end encrypted.
const GENESIS_ENCRYPTED: u8 = 2;

impl Genesis {
    /// Signs a new genesis. `nonce` makes two rooms created in the same
    /// millisecond with the same name distinct; `open` is the join rule;
    /// `encrypted` says the room's content is end-to-end encrypted.
    pub(crate) fn sign(
        key: &DeviceKey,
        hlc: Hlc,
        name: &str,
        nonce: [u8; 16],
        open: bool,
        encrypted: bool,
    ) -> Result<Self, DecodeError> {
        if name.len() > MAX_ROOM_NAME_BYTES {
            return Err(DecodeError::TooLarge {
                what: "room name",
                len: name.len(),
                max: MAX_ROOM_NAME_BYTES,
            });
        }
        let mut bytes = Vec::with_capacity(128 + name.len());
        bytes.extend_from_slice(GENESIS_MAGIC);
        // Unencrypted rooms keep format 2, which earlier releases read.
        bytes.put_u8(if encrypted { GENESIS_FORMAT_VERSION } else { ROOM_FORMAT_VERSION });
        bytes.extend_from_slice(key.author().as_bytes());
        bytes.put_u64(hlc.as_u64());
        bytes.put_str_u8(name);
        let flags =
            if open { GENESIS_OPEN } else { 0 } | if encrypted { GENESIS_ENCRYPTED } else { 0 };
        bytes.put_u8(flags);
        bytes.extend_from_slice(&nonce);
        let signature = key.sign(&bytes);
        bytes.extend_from_slice(&signature);
        Ok(Self { creator: key.author(), hlc, name: name.to_owned(), open, encrypted, bytes })
    }

    /// Decodes and verifies a genesis from untrusted bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        check_len(bytes, 4 + 1 + 32 + 8 + 1 + 255 + 1 + 16 + SIGNATURE_LEN, "genesis")?;
        let mut r = Reader::new(bytes);
        let version =
            check_versioned_header(&mut r, GENESIS_MAGIC, "genesis", GENESIS_FORMAT_VERSION)?;
        let creator = AuthorId(r.array("creator")?);
        let hlc = Hlc(r.u64("hlc")?);
        let name = r.str_u8("room name")?.to_owned();
        let (open, encrypted) = match version {
            1 => (true, false),
            2 => match r.u8("flags")? {
                0 => (false, false),
                GENESIS_OPEN => (true, false),
                _ => return Err(DecodeError::InvalidValue("genesis flags").into()),
            },
            // Format 3 always says whether the room is encrypted, and is
            // written only for rooms that are.
            _ => match r.u8("flags")? {
                f if f & !(GENESIS_OPEN | GENESIS_ENCRYPTED) == 0 && f & GENESIS_ENCRYPTED != 0 => {
                    (f & GENESIS_OPEN != 0, true)
                }
                _ => return Err(DecodeError::InvalidValue("genesis flags").into()),
            },
        };
        let _nonce: [u8; 16] = r.array("nonce")?;
        let signed_len = r.position();
        let signature: [u8; SIGNATURE_LEN] = r.array("signature")?;
        r.finish()?;
        keys::verify(&creator, &bytes[..signed_len], &signature)?;
        Ok(Self { creator, hlc, name, open, encrypted, bytes: bytes.to_vec() })
    }

    /// The room id this genesis founds.
    pub fn room_id(&self) -> RoomId {
        RoomId(*blake3::hash(&self.bytes).as_bytes())
    }
    /// Who created the room.
    pub fn creator(&self) -> AuthorId {
        self.creator
    }
    /// When the room was created.
    pub fn created(&self) -> Hlc {
        self.hlc
    }
    /// The room's name at creation.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The join rule: an open room lets anyone who is not banned post; in
    /// any other room only members do.
    pub fn is_open(&self) -> bool {
        self.open
    }
    /// Whether the room's content is end-to-end encrypted: bodies,
    /// attachments and reactions travel and rest as ciphertext only its
    /// members' devices can read.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }
    /// The signed encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The fields an author signs into an update envelope.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct EnvelopeFields<'a> {
    pub room: RoomId,
    pub bucket: u32,
    pub clock_start: u32,
    pub clock_end: u32,
    pub hlc: Hlc,
    pub update: &'a [u8],
    pub blobs: &'a [BlobHash],
    pub gov_heads: &'a [GovHead],
}

/// One signed change to one author's document in one bucket of one room.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Envelope {
    room: RoomId,
    bucket: u32,
    author: AuthorId,
    clock_start: u32,
    clock_end: u32,
    hlc: Hlc,
    update_range: (usize, usize),
    blobs: Vec<BlobHash>,
    gov_heads: Vec<GovHead>,
    bytes: Vec<u8>,
}

impl Envelope {
    /// Encodes and signs an envelope.
    pub(crate) fn sign(key: &DeviceKey, f: EnvelopeFields<'_>) -> Result<Self, DecodeError> {
        if f.update.len() > MAX_UPDATE_BYTES {
            return Err(DecodeError::TooLarge {
                what: "update",
                len: f.update.len(),
                max: MAX_UPDATE_BYTES,
            });
        }
        if f.blobs.len() > MAX_BLOBS_PER_ENVELOPE {
            return Err(DecodeError::TooLarge {
                what: "blob hashes",
                len: f.blobs.len(),
                max: MAX_BLOBS_PER_ENVELOPE,
            });
        }
        if f.gov_heads.len() > MAX_CITED_HEADS {
            return Err(DecodeError::TooLarge {
                what: "cited governance heads",
                len: f.gov_heads.len(),
                max: MAX_CITED_HEADS,
            });
        }
        let author = key.author();
        let mut bytes =
            Vec::with_capacity(200 + f.update.len() + 32 * (f.blobs.len() + f.gov_heads.len()));
        bytes.extend_from_slice(ENVELOPE_MAGIC);
        bytes.put_u8(ROOM_FORMAT_VERSION);
        bytes.extend_from_slice(f.room.as_bytes());
        bytes.put_u32(f.bucket);
        bytes.extend_from_slice(author.as_bytes());
        bytes.put_u64(keys::client_id(&author));
        bytes.put_u32(f.clock_start);
        bytes.put_u32(f.clock_end);
        bytes.put_u64(f.hlc.as_u64());
        bytes.put_u32(f.update.len() as u32);
        let update_start = bytes.len();
        bytes.extend_from_slice(f.update);
        let update_range = (update_start, bytes.len());
        bytes.put_u16(f.blobs.len() as u16);
        for hash in f.blobs {
            bytes.extend_from_slice(hash.as_bytes());
        }
        bytes.put_u8(f.gov_heads.len() as u8);
        for head in f.gov_heads {
            bytes.extend_from_slice(head);
        }
        let signature = key.sign(&bytes);
        bytes.extend_from_slice(&signature);
        Ok(Self {
            room: f.room,
            bucket: f.bucket,
            author,
            clock_start: f.clock_start,
            clock_end: f.clock_end,
            hlc: f.hlc,
            update_range,
            blobs: f.blobs.to_vec(),
            gov_heads: f.gov_heads.to_vec(),
            bytes,
        })
    }

    /// Decodes and verifies an envelope from untrusted bytes: size caps first,
    /// then structure, then the author's signature over everything before it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Self::parse(bytes, true)
    }

    /// Decodes and verifies many envelopes, as [`Envelope::from_bytes`]
    /// does each, with the same result for each in the same order. A batch
    /// of [`PARALLEL_VERIFY_MIN`] or more is split over the machine's cores
    /// (scoped threads, joined before it returns): signature checks are
    /// what a relay or a large catch-up spends its time on, and each is
    /// independent of the others.
    pub fn from_bytes_many<B: AsRef<[u8]> + Sync>(raw: &[B]) -> Vec<Result<Self, EnvelopeError>> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores < 2 || raw.len() < PARALLEL_VERIFY_MIN {
            return raw.iter().map(|b| Self::from_bytes(b.as_ref())).collect();
        }
        let per = raw.len().div_ceil(cores);
        std::thread::scope(|scope| {
            let parts: Vec<_> = raw
                .chunks(per)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter().map(|b| Self::from_bytes(b.as_ref())).collect::<Vec<_>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|part| match part.join() {
                    Ok(results) => results,
                    // `from_bytes` does not panic; should it, the panic
                    // goes on as it would have on one thread.
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        })
    }

    /// Decodes an envelope this replica verified before it stored it. The
    /// structure is still checked (a corrupt record is an error, not a panic);
    /// only the signature check, the expensive part, is skipped.
    pub(crate) fn from_stored_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Self::parse(bytes, false)
    }

    fn parse(bytes: &[u8], verify: bool) -> Result<Self, EnvelopeError> {
        check_len(bytes, MAX_ENVELOPE_BYTES, "envelope")?;
        let mut r = Reader::new(bytes);
        let version =
            check_versioned_header(&mut r, ENVELOPE_MAGIC, "envelope", ROOM_FORMAT_VERSION)?;
        let room = RoomId(r.array("room")?);
        let bucket = r.u32("bucket")?;
        let author = AuthorId(r.array("author")?);
        let client = r.u64("client")?;
        let clock_start = r.u32("clock start")?;
        let clock_end = r.u32("clock end")?;
        let hlc = Hlc(r.u64("hlc")?);
        let update = r.bytes_u32(MAX_UPDATE_BYTES, "update")?;
        let update_end = r.position();
        let update_range = (update_end - update.len(), update_end);
        let count = r.count_u16(MAX_BLOBS_PER_ENVELOPE, 32, "blob hashes")?;
        let mut blobs = Vec::with_capacity(count);
        for _ in 0..count {
            blobs.push(BlobHash(r.array("blob hash")?));
        }
        let mut gov_heads = Vec::new();
        if version >= 2 {
            let count = usize::from(r.u8("cited heads")?);
            if count > MAX_CITED_HEADS {
                return Err(DecodeError::TooLarge {
                    what: "cited governance heads",
                    len: count,
                    max: MAX_CITED_HEADS,
                }
                .into());
            }
            for _ in 0..count {
                gov_heads.push(r.array("cited head")?);
            }
        }
        let signed_len = r.position();
        let signature: [u8; SIGNATURE_LEN] = r.array("signature")?;
        r.finish()?;
        if verify {
            keys::verify(&author, &bytes[..signed_len], &signature)?;
        }
        if client != keys::client_id(&author) {
            return Err(EnvelopeError::ForeignClient);
        }
        if clock_end <= clock_start {
            return Err(EnvelopeError::EmptyUpdate);
        }
        Ok(Self {
            room,
            bucket,
            author,
            clock_start,
            clock_end,
            hlc,
            update_range,
            blobs,
            gov_heads,
            bytes: bytes.to_vec(),
        })
    }

    /// The room this envelope was signed for.
    pub fn room(&self) -> RoomId {
        self.room
    }
    /// The time bucket of the document it changes.
    pub fn bucket(&self) -> u32 {
        self.bucket
    }
    /// The author, who signed it and owns the document it changes.
    pub fn author(&self) -> AuthorId {
        self.author
    }
    /// The yrs client clock range `[start, end)` its update inserts.
    pub fn clock_range(&self) -> (u32, u32) {
        (self.clock_start, self.clock_end)
    }
    /// When the author made the change.
    pub fn hlc(&self) -> Hlc {
        self.hlc
    }
    /// The yrs v1 update bytes.
    pub fn update(&self) -> &[u8] {
        &self.bytes[self.update_range.0..self.update_range.1]
    }
    /// Hashes of the blobs (body, attachments) the change introduces.
    pub fn blob_hashes(&self) -> &[BlobHash] {
        &self.blobs
    }
    /// The governance heads its author had seen: the change is judged by the
    /// author's role there. Empty for a version 1 envelope.
    pub fn gov_heads(&self) -> &[GovHead] {
        &self.gov_heads
    }
    /// The signed encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The envelope's hash: its identity on the wire (gossip message id).
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.bytes).as_bytes()
    }
}

/// An envelope with the blobs it names that the sender still holds. A blob of
/// a deleted or edited-away message is never in a delivery.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Delivery {
    /// The envelope.
    pub envelope: Envelope,
    /// Blob bytes (nonce ‖ content), each matching one of the envelope's hashes.
    pub blobs: Vec<Vec<u8>>,
}

impl Delivery {
    /// Checks that every blob is one the envelope names and is within caps.
    pub fn new(envelope: Envelope, blobs: Vec<Vec<u8>>) -> Result<Self, EnvelopeError> {
        if blobs.len() > MAX_BLOBS_PER_ENVELOPE {
            return Err(DecodeError::TooLarge {
                what: "blobs",
                len: blobs.len(),
                max: MAX_BLOBS_PER_ENVELOPE,
            }
            .into());
        }
        for b in &blobs {
            blob::content(b)?;
            if !envelope.blobs.contains(&blob::hash(b)) {
                return Err(EnvelopeError::BlobMismatch);
            }
        }
        Ok(Self { envelope, blobs })
    }

    /// Encodes the delivery.
    pub fn to_bytes(&self) -> Vec<u8> {
        let size =
            self.envelope.bytes.len() + self.blobs.iter().map(|b| b.len() + 4).sum::<usize>();
        let mut out = Vec::with_capacity(16 + size);
        out.extend_from_slice(DELIVERY_MAGIC);
        out.put_u8(FORMAT_VERSION);
        out.put_bytes_u32(&self.envelope.bytes);
        out.put_u16(self.blobs.len() as u16);
        for b in &self.blobs {
            out.put_bytes_u32(b);
        }
        out
    }

    /// Decodes and verifies a delivery from untrusted bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        check_len(bytes, MAX_DELIVERY_BYTES, "delivery")?;
        let mut r = Reader::new(bytes);
        check_header(&mut r, DELIVERY_MAGIC, "delivery")?;
        let envelope = Envelope::from_bytes(r.bytes_u32(MAX_ENVELOPE_BYTES, "envelope")?)?;
        let count = r.count_u16(MAX_BLOBS_PER_ENVELOPE, 4 + BLOB_NONCE_LEN, "blobs")?;
        let mut blobs = Vec::with_capacity(count);
        for _ in 0..count {
            blobs.push(r.bytes_u32(MAX_WIRE_BLOB_BYTES, "blob")?.to_vec());
        }
        r.finish()?;
        Self::new(envelope, blobs)
    }
}
