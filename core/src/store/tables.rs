//! Every tree of the store, in one place: name (with a version suffix), key
//! layout and value layout. Integers are big-endian so byte order is numeric
//! order. `room` is a 32-byte room id, `author` a 32-byte public key, `bucket`
//! a `u32`, `sortkey` 56 bytes (hlc u64 ‖ author ‖ message id), `msgid` the 16
//! bytes of a UUIDv7. A layout change gets a new suffix and a migration.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta-1` | `schema` / `device-key` / `hlc` / `kek-seq` / `olm-account` | schema u32 / 32-byte secret seed / last HLC u64 / seq u64 of the secret slot the bucket keys are sealed under / device keys (64) ‖ the Olm account's pickle, encrypted under a key derived from the device key |
//! | `rooms-1` | room | the room's signed genesis |
//! | `docs-1` | room ‖ bucket ‖ author | next clock u32 of that author document |
//! | `envelopes-1` | room ‖ bucket ‖ author ‖ clock_start u32 | applied envelope |
//! | `pending-2` | room ‖ bucket ‖ author ‖ clock_start u32 | delivery waiting for its causal past, sealed under the bucket key |
//! | `blobs-2` | room ‖ blob hash | bucket u32 ‖ the blob of a live message, sealed under its content key |
//! | `timeline-1` | room ‖ sortkey | rendered message row (no body) |
//! | `bodies-2` | room ‖ sortkey | the live message's body: 0 ‖ its blob's content key sealed under the bucket key (72 bytes) ‖ the text sealed under the content key |
//! | `bucket-keys-1` | room ‖ bucket | seq u64 of the key-encryption key ‖ the bucket key sealed under it (72 bytes) |
//! | `content-keys-1` | room ‖ bucket ‖ blob hash | the blob's content key, sealed under the bucket key (72 bytes) |
//! | `shred-1` | room ‖ bucket | empty: content of the bucket was erased since the last shred |
//! | `outbound-1` | room ‖ bucket | this device's Megolm session for the bucket, pickled and encrypted under a key derived from the device key |
//! | `recipients-1` | room ‖ bucket | that session's id ‖ count u16 ‖ (author ‖ device keys (64) ‖ shared from index u32)*: whom it was shared with |
//! | `inbound-1` | room ‖ session id | owner ‖ bucket u32 ‖ first index u32 ‖ pickle: a Megolm session this device decrypts with |
//! | `key-waits-1` | room ‖ session id ‖ bucket u32 ‖ msgid | index u32: a message waiting for that session's key |
//! | `message-ids-1` | room ‖ msgid | sortkey of the live message |
//! | `tombstones-1` | room ‖ bucket ‖ msgid ‖ author | posted hlc u64 ‖ deleted hlc u64 |
//! | `reads-1` | room ‖ author ‖ bucket | sortkey the author marked read in that bucket |
//! | `wanted-blobs-1` | room ‖ bucket ‖ blob hash | sortkey of the live message missing it ‖ kind u8 (0 body, 1 attachment) |
//! | `windows-1` | room | oldest bucket u32 the replica holds (absent: all of them) |
//! | `reached-1` | room | HLC u64: every own envelope stamped at or before it reached a peer or relay |
//! | `governance-1` | room ‖ change hash | accepted signed governance change |
//! | `blobs-1`, `bodies-1`, `pending-1` | as `blobs-2`, `bodies-2`, `pending-2`, in the clear | schema 3 and before; emptied by migration 4 |
//! | `outbox-1` | sequence u64 | record for a mirror: kind u8 (0 room, 1 envelope, 2 blob, 3 erased, 4 governance change) ‖ genesis / envelope / room ‖ hash ‖ blob / room ‖ hash / change; written only under an `OutboxStore` |

use crate::ids::{AuthorId, BlobHash, MessageId, RoomId, SortKey};

/// A tree of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Tree {
    /// Schema version, device key, last HLC.
    Meta,
    /// Room genesis records.
    Rooms,
    /// Author documents that exist, with their next clock.
    Docs,
    /// Applied envelopes.
    Envelopes,
    /// Deliveries waiting for their causal past.
    Pending,
    /// Blobs of live messages.
    Blobs,
    /// Rendered timeline rows.
    Timeline,
    /// Live message id to sort key.
    MessageIds,
    /// Tombstones of deleted messages.
    Tombstones,
    /// Read markers per author and bucket.
    Reads,
    /// Blobs that live messages reference but this replica lacks.
    WantedBlobs,
    /// The oldest bucket held per room, for replicas that keep recent history.
    Windows,
    /// Body text of live messages, in timeline order, so a page is two range
    /// scans instead of a range scan and one random read per message.
    Bodies,
    /// Per room, the newest own stamp known to have reached another device.
    Reached,
    /// Records for a mirror of the store (a relay's wide-column store),
    /// written only when the store is wrapped in an `OutboxStore`.
    Outbox,
    /// Accepted governance changes of each room.
    Governance,
    /// Each bucket's key, sealed under the store's key-encryption key.
    BucketKeys,
    /// Each stored blob's content key, sealed under its bucket's key.
    ContentKeys,
    /// Buckets whose erased content awaits the next shred.
    Shred,
    /// Blobs in the clear (schema 3 and before): read only by migration 4.
    LegacyBlobs,
    /// Body text in the clear (schema 3 and before): read only by migration 4.
    LegacyBodies,
    /// Pending deliveries in the clear (schema 3 and before): read only by
    /// migration 4.
    LegacyPending,
    /// This device's Megolm session per room bucket.
    Outbound,
    /// Whom each of those sessions was shared with.
    Recipients,
    /// Megolm sessions this device decrypts with.
    Inbound,
    /// Messages waiting for a session's key.
    KeyWaits,
}

impl Tree {
    /// Every tree.
    pub const ALL: [Tree; 26] = [
        Tree::Meta,
        Tree::Rooms,
        Tree::Docs,
        Tree::Envelopes,
        Tree::Pending,
        Tree::Blobs,
        Tree::Timeline,
        Tree::MessageIds,
        Tree::Tombstones,
        Tree::Reads,
        Tree::WantedBlobs,
        Tree::Windows,
        Tree::Bodies,
        Tree::Reached,
        Tree::Outbox,
        Tree::Governance,
        Tree::BucketKeys,
        Tree::ContentKeys,
        Tree::Shred,
        Tree::LegacyBlobs,
        Tree::LegacyBodies,
        Tree::LegacyPending,
        Tree::Outbound,
        Tree::Recipients,
        Tree::Inbound,
        Tree::KeyWaits,
    ];

    /// The tree's name on disk, with its layout version.
    pub const fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta-1",
            Tree::Rooms => "rooms-1",
            Tree::Docs => "docs-1",
            Tree::Envelopes => "envelopes-1",
            Tree::Pending => "pending-2",
            Tree::Blobs => "blobs-2",
            Tree::Timeline => "timeline-1",
            Tree::MessageIds => "message-ids-1",
            Tree::Tombstones => "tombstones-1",
            Tree::Reads => "reads-1",
            Tree::WantedBlobs => "wanted-blobs-1",
            Tree::Windows => "windows-1",
            Tree::Bodies => "bodies-2",
            Tree::Reached => "reached-1",
            Tree::Outbox => "outbox-1",
            Tree::Governance => "governance-1",
            Tree::BucketKeys => "bucket-keys-1",
            Tree::ContentKeys => "content-keys-1",
            Tree::Shred => "shred-1",
            Tree::LegacyBlobs => "blobs-1",
            Tree::LegacyBodies => "bodies-1",
            Tree::LegacyPending => "pending-1",
            Tree::Outbound => "outbound-1",
            Tree::Recipients => "recipients-1",
            Tree::Inbound => "inbound-1",
            Tree::KeyWaits => "key-waits-1",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

pub(crate) const META_SCHEMA: &[u8] = b"schema";
pub(crate) const META_DEVICE_KEY: &[u8] = b"device-key";
pub(crate) const META_HLC: &[u8] = b"hlc";
pub(crate) const META_KEK_SEQ: &[u8] = b"kek-seq";
pub(crate) const META_OLM_ACCOUNT: &[u8] = b"olm-account";

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// `room ‖ bucket`: prefix of one bucket's documents, envelopes and tombstones.
pub(crate) fn bucket_prefix(room: &RoomId, bucket: u32) -> Vec<u8> {
    cat(&[room.as_bytes(), &bucket.to_be_bytes()])
}

/// `room ‖ bucket ‖ author`: key of `docs-1`, prefix of one document's envelopes.
pub(crate) fn doc_key(room: &RoomId, bucket: u32, author: &AuthorId) -> Vec<u8> {
    cat(&[room.as_bytes(), &bucket.to_be_bytes(), author.as_bytes()])
}

/// Key of `envelopes-1` and `pending-1`.
pub(crate) fn envelope_key(room: &RoomId, bucket: u32, author: &AuthorId, clock: u32) -> Vec<u8> {
    cat(&[room.as_bytes(), &bucket.to_be_bytes(), author.as_bytes(), &clock.to_be_bytes()])
}

/// Splits a `docs-1` key into its author.
pub(crate) fn doc_key_author(key: &[u8]) -> Option<AuthorId> {
    let raw: [u8; 32] = key.get(36..68)?.try_into().ok()?;
    Some(AuthorId::from_bytes(raw))
}

/// Key of `governance-1`.
pub(crate) fn governance_key(room: &RoomId, head: &[u8; 32]) -> Vec<u8> {
    cat(&[room.as_bytes(), head])
}

/// Key of `content-keys-1`.
pub(crate) fn content_key_key(room: &RoomId, bucket: u32, hash: &BlobHash) -> Vec<u8> {
    cat(&[room.as_bytes(), &bucket.to_be_bytes(), hash.as_bytes()])
}

/// Key of `inbound-1`; with a bucket and message id, of `key-waits-1`.
pub(crate) fn session_key(room: &RoomId, session: &[u8; 32]) -> Vec<u8> {
    cat(&[room.as_bytes(), session])
}

/// Key of `key-waits-1`.
pub(crate) fn key_wait_key(
    room: &RoomId,
    session: &[u8; 32],
    bucket: u32,
    id: &MessageId,
) -> Vec<u8> {
    cat(&[room.as_bytes(), session, &bucket.to_be_bytes(), id.as_bytes()])
}

/// Key of `blobs-2`.
pub(crate) fn blob_key(room: &RoomId, hash: &BlobHash) -> Vec<u8> {
    cat(&[room.as_bytes(), hash.as_bytes()])
}

/// Key of `timeline-1`.
pub(crate) fn timeline_key(room: &RoomId, key: &SortKey) -> Vec<u8> {
    cat(&[room.as_bytes(), &key.to_bytes()])
}

/// Key of `message-ids-1`.
pub(crate) fn message_id_key(room: &RoomId, id: &MessageId) -> Vec<u8> {
    cat(&[room.as_bytes(), id.as_bytes()])
}

/// Key of `tombstones-1`.
pub(crate) fn tombstone_key(
    room: &RoomId,
    bucket: u32,
    id: &MessageId,
    author: &AuthorId,
) -> Vec<u8> {
    cat(&[room.as_bytes(), &bucket.to_be_bytes(), id.as_bytes(), author.as_bytes()])
}

/// Key of `reads-1`.
pub(crate) fn read_key(room: &RoomId, author: &AuthorId, bucket: u32) -> Vec<u8> {
    cat(&[room.as_bytes(), author.as_bytes(), &bucket.to_be_bytes()])
}

/// Key of `tombstones-1` up to the message id: every author's tombstone for it.
pub(crate) fn tombstone_prefix(room: &RoomId, bucket: u32, id: &MessageId) -> Vec<u8> {
    cat(&[room.as_bytes(), &bucket.to_be_bytes(), id.as_bytes()])
}

/// Key of `wanted-blobs-1`.
pub(crate) fn wanted_blob_key(room: &RoomId, bucket: u32, hash: &BlobHash) -> Vec<u8> {
    cat(&[room.as_bytes(), &bucket.to_be_bytes(), hash.as_bytes()])
}

/// The bucket of a key that starts with `room ‖ bucket`.
pub(crate) fn key_bucket(key: &[u8]) -> Option<u32> {
    key.get(32..36).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes)
}
