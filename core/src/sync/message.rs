//! Sync messages and their byte format (`docs/protocol.md`, "Sync").
//!
//! Decoding takes untrusted bytes: the whole message is capped before
//! anything is read, every count is checked against its cap and against the
//! bytes that remain before anything is allocated, and every failure is a
//! typed [`DecodeError`]. Envelopes inside a message are decoded here only as
//! bounded byte strings; the session verifies each one on its own, so one
//! forged envelope costs its sender that envelope, not the whole message.

use crate::blob::MAX_WIRE_BLOB_BYTES;
use crate::codec::{Reader, Writer};
use crate::envelope::{MAX_BLOBS_PER_ENVELOPE, MAX_DELIVERY_BYTES, MAX_ENVELOPE_BYTES};
use crate::error::DecodeError;
use crate::governance::{GovHead, MAX_GOV_CHANGE_BYTES, MAX_GOV_DEPS};
use crate::ids::{AuthorId, BlobHash, RoomId};

const SYNC_MAGIC: &[u8; 4] = b"CNCS";
/// Version of the sync message format.
pub const SYNC_VERSION: u8 = 2;

/// Length of a bucket digest. 16 bytes keep accidental collisions out of
/// reach while a digest per held bucket stays small.
pub const DIGEST_LEN: usize = 16;
/// Largest encoded sync message: one largest delivery plus framing. Flights
/// are cut into chunks of about [`CHUNK_BYTES`], far below this.
pub const MAX_SYNC_MESSAGE_BYTES: usize = MAX_DELIVERY_BYTES + 64 * 1024;
/// Size a sender aims for when cutting a flight into chunks.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Most bucket entries (digests or versions) in one message: 180 years of
/// one-day buckets.
pub const MAX_BUCKETS_PER_MESSAGE: usize = 65_536;
/// Most authors listed for one bucket.
pub const MAX_AUTHORS_PER_BUCKET: usize = 65_535;
/// Most wanted blob hashes listed for one bucket in one message; more are
/// asked for in later syncs.
pub const MAX_WANTED_BLOBS: usize = 1024;

/// Most elements reserved up front while decoding. Counts are checked
/// against the bytes left, but a 40-byte element decoded from 5 bytes of
/// input would still let a count reserve 8x the input; growing past this
/// is paid for by bytes actually read.
const PREALLOC: usize = 256;

const KIND_FLIGHT: u8 = 1;
const KIND_FETCH: u8 = 2;
const KIND_HISTORY: u8 = 3;

/// A bucket's digest, as a replica announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketDigest {
    /// The bucket.
    pub bucket: u32,
    /// Hash of its author documents' progress.
    pub digest: [u8; DIGEST_LEN],
    /// Whether live messages there reference blobs the sender lacks.
    pub wants_blobs: bool,
}

/// One combined digest over every held bucket below `below`, so that a
/// long history costs one entry until something old differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OlderDigest {
    /// The digest covers held buckets below this one.
    pub below: u32,
    /// Hash of those buckets' digests.
    pub digest: [u8; DIGEST_LEN],
}

/// How far the sender holds each author document of a bucket, and which of
/// its blobs it lacks: a request for everything beyond.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketVersions {
    /// The bucket.
    pub bucket: u32,
    /// Each author's next clock in that bucket.
    pub authors: Vec<(AuthorId, u32)>,
    /// Blobs of live messages the sender lacks.
    pub wanted_blobs: Vec<BlobHash>,
}

/// An envelope and its blobs as bytes, not yet verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawDelivery {
    /// The envelope's bytes.
    pub envelope: Vec<u8>,
    /// Its blobs.
    pub blobs: Vec<Vec<u8>>,
}

impl RawDelivery {
    fn encoded_len(&self) -> usize {
        4 + self.envelope.len() + 1 + self.blobs.iter().map(|b| 4 + b.len()).sum::<usize>()
    }
}

/// One chunk of a catch-up flight: everything one side says before it waits
/// for the other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flight {
    /// More chunks of this flight follow.
    pub more: bool,
    /// The oldest bucket the sender keeps (and wants to receive).
    pub from_bucket: u32,
    /// Combined digest of the sender's older buckets.
    pub older: Option<OlderDigest>,
    /// Digests for the receiver to compare: every bucket the sender holds
    /// in a range of buckets.
    pub digests: Option<DigestSet>,
    /// Versions the receiver answers with what the sender lacks.
    pub versions: Vec<BucketVersions>,
    /// Envelopes the receiver lacks.
    pub deliveries: Vec<RawDelivery>,
    /// Blobs the receiver asked for, with their bucket.
    pub blobs: Vec<(u32, Vec<u8>)>,
    /// The sender's governance heads (first chunk of every flight).
    pub gov_heads: Option<Vec<GovHead>>,
    /// The sender lacks governance changes the receiver announced: a
    /// request for them.
    pub gov_wanted: bool,
    /// Signed governance changes the receiver lacks, dependencies first.
    pub gov_changes: Vec<Vec<u8>>,
}

impl Flight {
    /// Whether this chunk asks anything of the receiver.
    pub fn has_requests(&self) -> bool {
        self.digests.is_some()
            || !self.versions.is_empty()
            || self.older.is_some()
            || self.gov_wanted
    }
}

/// The digests of every bucket the sender holds within `[from, to)`; a
/// bucket of the range that is not listed is one the sender lacks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestSet {
    /// First bucket of the range.
    pub from: u32,
    /// End of the range (exclusive).
    pub to: u32,
    /// The digests, oldest first.
    pub entries: Vec<BucketDigest>,
}

/// Older history, answering a [`SyncMessage::Fetch`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// More chunks follow.
    pub more: bool,
    /// The sender holds nothing older than these buckets.
    pub exhausted: bool,
    /// The oldest bucket the deliveries cover (all of `[from, before)`).
    pub from: u32,
    /// The envelopes of those buckets.
    pub deliveries: Vec<RawDelivery>,
}

/// A message of the sync protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncMessage {
    /// A chunk of a catch-up flight.
    Flight {
        /// The room.
        room: RoomId,
        /// The chunk.
        flight: Flight,
    },
    /// A request for history older than a bucket.
    Fetch {
        /// The room.
        room: RoomId,
        /// Send buckets older than this one.
        before: u32,
        /// Send whole buckets until they hold at least this many envelopes.
        min_envelopes: u32,
    },
    /// A chunk of older history.
    History {
        /// The room.
        room: RoomId,
        /// The chunk.
        history: History,
    },
}

impl SyncMessage {
    /// The room the message is about.
    pub fn room(&self) -> RoomId {
        match self {
            SyncMessage::Flight { room, .. }
            | SyncMessage::Fetch { room, .. }
            | SyncMessage::History { room, .. } => *room,
        }
    }

    /// Encodes the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(SYNC_MAGIC);
        out.put_u8(SYNC_VERSION);
        match self {
            SyncMessage::Flight { room, flight } => {
                out.put_u8(KIND_FLIGHT);
                out.extend_from_slice(room.as_bytes());
                let flags = u8::from(flight.more)
                    | (u8::from(flight.older.is_some()) << 1)
                    | (u8::from(flight.digests.is_some()) << 2)
                    | (u8::from(flight.gov_heads.is_some()) << 3)
                    | (u8::from(flight.gov_wanted) << 4);
                out.put_u8(flags);
                out.put_u32(flight.from_bucket);
                if let Some(older) = &flight.older {
                    out.put_u32(older.below);
                    out.extend_from_slice(&older.digest);
                }
                if let Some(set) = &flight.digests {
                    out.put_u32(set.from);
                    out.put_u32(set.to);
                    out.put_u32(set.entries.len() as u32);
                    for d in &set.entries {
                        out.put_u32(d.bucket);
                        out.extend_from_slice(&d.digest);
                        out.put_u8(u8::from(d.wants_blobs));
                    }
                }
                out.put_u32(flight.versions.len() as u32);
                for v in &flight.versions {
                    out.put_u32(v.bucket);
                    out.put_u16(v.authors.len() as u16);
                    for (author, clock) in &v.authors {
                        out.extend_from_slice(author.as_bytes());
                        out.put_u32(*clock);
                    }
                    out.put_u16(v.wanted_blobs.len() as u16);
                    for h in &v.wanted_blobs {
                        out.extend_from_slice(h.as_bytes());
                    }
                }
                if let Some(heads) = &flight.gov_heads {
                    out.put_u8(heads.len() as u8);
                    for h in heads {
                        out.extend_from_slice(h);
                    }
                }
                out.put_u32(flight.gov_changes.len() as u32);
                for c in &flight.gov_changes {
                    out.put_bytes_u32(c);
                }
                put_deliveries(&mut out, &flight.deliveries);
                out.put_u32(flight.blobs.len() as u32);
                for (bucket, b) in &flight.blobs {
                    out.put_u32(*bucket);
                    out.put_bytes_u32(b);
                }
            }
            SyncMessage::Fetch { room, before, min_envelopes } => {
                out.put_u8(KIND_FETCH);
                out.extend_from_slice(room.as_bytes());
                out.put_u32(*before);
                out.put_u32(*min_envelopes);
            }
            SyncMessage::History { room, history } => {
                out.put_u8(KIND_HISTORY);
                out.extend_from_slice(room.as_bytes());
                out.put_u8(u8::from(history.more) | (u8::from(history.exhausted) << 1));
                out.put_u32(history.from);
                put_deliveries(&mut out, &history.deliveries);
            }
        }
        out
    }

    /// Decodes a message from untrusted bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_SYNC_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge {
                what: "sync message",
                len: bytes.len(),
                max: MAX_SYNC_MESSAGE_BYTES,
            });
        }
        let mut r = Reader::new(bytes);
        if &r.array::<4>("sync magic")? != SYNC_MAGIC {
            return Err(DecodeError::BadMagic { what: "sync message" });
        }
        match r.u8("sync version")? {
            SYNC_VERSION => {}
            v => return Err(DecodeError::UnsupportedVersion(v)),
        }
        let kind = r.u8("sync kind")?;
        let room = RoomId::from_bytes(r.array("room")?);
        let message = match kind {
            KIND_FLIGHT => SyncMessage::Flight { room, flight: read_flight(&mut r)? },
            KIND_FETCH => SyncMessage::Fetch {
                room,
                before: r.u32("fetch before")?,
                min_envelopes: r.u32("fetch size")?,
            },
            KIND_HISTORY => {
                let flags = r.u8("history flags")?;
                if flags & !0b11 != 0 {
                    return Err(DecodeError::InvalidValue("history flags"));
                }
                let from = r.u32("history from")?;
                let deliveries = read_deliveries(&mut r)?;
                SyncMessage::History {
                    room,
                    history: History {
                        more: flags & 1 != 0,
                        exhausted: flags & 2 != 0,
                        from,
                        deliveries,
                    },
                }
            }
            _ => return Err(DecodeError::InvalidValue("sync kind")),
        };
        r.finish()?;
        Ok(message)
    }
}

fn put_deliveries(out: &mut Vec<u8>, deliveries: &[RawDelivery]) {
    out.put_u32(deliveries.len() as u32);
    for d in deliveries {
        out.put_bytes_u32(&d.envelope);
        out.put_u8(d.blobs.len() as u8);
        for b in &d.blobs {
            out.put_bytes_u32(b);
        }
    }
}

fn read_deliveries(r: &mut Reader<'_>) -> Result<Vec<RawDelivery>, DecodeError> {
    // Each delivery takes at least its length prefix and blob count.
    let count = r.count_u32(usize::MAX, 5, "deliveries")?;
    let mut out = Vec::with_capacity(count.min(PREALLOC));
    for _ in 0..count {
        let envelope = r.bytes_u32(MAX_ENVELOPE_BYTES, "envelope")?.to_vec();
        let n = r.u8("blob count")? as usize;
        if n > MAX_BLOBS_PER_ENVELOPE {
            return Err(DecodeError::TooLarge {
                what: "blobs",
                len: n,
                max: MAX_BLOBS_PER_ENVELOPE,
            });
        }
        let mut blobs = Vec::with_capacity(n.min(PREALLOC));
        for _ in 0..n {
            blobs.push(r.bytes_u32(MAX_WIRE_BLOB_BYTES, "blob")?.to_vec());
        }
        out.push(RawDelivery { envelope, blobs });
    }
    Ok(out)
}

fn read_flight(r: &mut Reader<'_>) -> Result<Flight, DecodeError> {
    let flags = r.u8("flight flags")?;
    if flags & !0b11111 != 0 {
        return Err(DecodeError::InvalidValue("flight flags"));
    }
    let from_bucket = r.u32("from bucket")?;
    let older = if flags & 2 != 0 {
        Some(OlderDigest { below: r.u32("older below")?, digest: r.array("older digest")? })
    } else {
        None
    };
    let digests = if flags & 4 != 0 {
        let from = r.u32("digests from")?;
        let to = r.u32("digests to")?;
        let n = r.count_u32(MAX_BUCKETS_PER_MESSAGE, 4 + DIGEST_LEN + 1, "digests")?;
        let mut entries = Vec::with_capacity(n.min(PREALLOC));
        for _ in 0..n {
            let bucket = r.u32("digest bucket")?;
            let digest = r.array("digest")?;
            let wants_blobs = match r.u8("digest flags")? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::InvalidValue("digest flags")),
            };
            entries.push(BucketDigest { bucket, digest, wants_blobs });
        }
        Some(DigestSet { from, to, entries })
    } else {
        None
    };
    let n = r.count_u32(MAX_BUCKETS_PER_MESSAGE, 8, "versions")?;
    let mut versions = Vec::with_capacity(n.min(PREALLOC));
    for _ in 0..n {
        let bucket = r.u32("versions bucket")?;
        let k = r.count_u16(MAX_AUTHORS_PER_BUCKET, 36, "versions authors")?;
        let mut authors = Vec::with_capacity(k.min(PREALLOC));
        for _ in 0..k {
            authors.push((AuthorId::from_bytes(r.array("author")?), r.u32("clock")?));
        }
        let k = r.count_u16(MAX_WANTED_BLOBS, 32, "wanted blobs")?;
        let mut wanted_blobs = Vec::with_capacity(k.min(PREALLOC));
        for _ in 0..k {
            wanted_blobs.push(BlobHash(r.array("wanted blob")?));
        }
        versions.push(BucketVersions { bucket, authors, wanted_blobs });
    }
    let gov_heads = if flags & 8 != 0 {
        let n = usize::from(r.u8("governance heads")?);
        if n > MAX_GOV_DEPS {
            return Err(DecodeError::TooLarge {
                what: "governance heads",
                len: n,
                max: MAX_GOV_DEPS,
            });
        }
        let mut heads = Vec::with_capacity(n);
        for _ in 0..n {
            heads.push(r.array("governance head")?);
        }
        Some(heads)
    } else {
        None
    };
    let n = r.count_u32(usize::MAX, 4, "governance changes")?;
    let mut gov_changes = Vec::with_capacity(n.min(PREALLOC));
    for _ in 0..n {
        gov_changes.push(r.bytes_u32(MAX_GOV_CHANGE_BYTES, "governance change")?.to_vec());
    }
    let deliveries = read_deliveries(r)?;
    let n = r.count_u32(usize::MAX, 8, "blobs")?;
    let mut blobs = Vec::with_capacity(n.min(PREALLOC));
    for _ in 0..n {
        let bucket = r.u32("blob bucket")?;
        blobs.push((bucket, r.bytes_u32(MAX_WIRE_BLOB_BYTES, "blob")?.to_vec()));
    }
    Ok(Flight {
        more: flags & 1 != 0,
        from_bucket,
        older,
        digests,
        versions,
        deliveries,
        blobs,
        gov_heads,
        gov_wanted: flags & 16 != 0,
        gov_changes,
    })
}

/// Cuts deliveries and blobs into chunks of about [`CHUNK_BYTES`]; the first
/// chunk carries `head` (digests and versions), the last is marked final.
pub(crate) fn chunk_flight(
    head: Flight,
    deliveries: Vec<RawDelivery>,
    blobs: Vec<(u32, Vec<u8>)>,
) -> Vec<Flight> {
    let mut chunks = vec![head];
    let mut size = 0usize;
    for d in deliveries {
        let len = d.encoded_len();
        if size > 0 && size + len > CHUNK_BYTES {
            chunks.push(Flight { from_bucket: chunks[0].from_bucket, ..Flight::default() });
            size = 0;
        }
        size += len;
        if let Some(last) = chunks.last_mut() {
            last.deliveries.push(d);
        }
    }
    for (bucket, b) in blobs {
        let len = 8 + b.len();
        if size > 0 && size + len > CHUNK_BYTES {
            chunks.push(Flight { from_bucket: chunks[0].from_bucket, ..Flight::default() });
            size = 0;
        }
        size += len;
        if let Some(last) = chunks.last_mut() {
            last.blobs.push((bucket, b));
        }
    }
    let n = chunks.len();
    for (i, c) in chunks.iter_mut().enumerate() {
        c.more = i + 1 < n;
    }
    chunks
}

/// Cuts history deliveries into chunks the same way.
pub(crate) fn chunk_history(
    from: u32,
    exhausted: bool,
    deliveries: Vec<RawDelivery>,
) -> Vec<History> {
    let flights = chunk_flight(Flight::default(), deliveries, Vec::new());
    let n = flights.len();
    flights
        .into_iter()
        .enumerate()
        .map(|(i, f)| History { more: i + 1 < n, exhausted, from, deliveries: f.deliveries })
        .collect()
}
