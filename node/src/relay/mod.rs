//! The relay's durable store: a wide-column layout every backend shares.
//!
//! A relay keeps every valid envelope of the rooms it serves, and the blobs
//! of live messages, so that devices that are rarely online at the same
//! time can meet through it. The layout is the one a wide-column database
//! serves well:
//!
//! - **envelopes**: partition key (room, bucket), sort key (HLC, author,
//!   envelope id), value the signed envelope. "The last N envelopes of a
//!   bucket before T" is one range read inside one partition.
//! - **buckets**: partition key room, sort key bucket: which partitions
//!   exist.
//! - **blobs**: key (room, blob hash), value the blob. A blob larger than a
//!   backend's item limit is split into chunks, one protocol for every
//!   wide-column backend (`chunks.rs`): chunk 0 is the manifest, written
//!   last, so a blob is visible only once whole. A blob is stored under
//!   its blake3 hash; a put whose bytes do not hash to it is refused, and a
//!   read that finds other bytes reports them corrupt.
//! - **rooms**: key room, value its signed genesis.
//! - **governance**: partition key room, sort key change hash, value the
//!   signed governance change (a rebuilt relay judges envelopes by them).
//!
//! Every write is idempotent: an envelope, blob, room or governance change
//! is written only if absent, and a second write of the same key reports
//! [`Written::AlreadyPresent`] and changes nothing. Erasing a blob (when a
//! delete reaches the relay) removes it for good.
//!
//! A relay stores each sync flight it receives (up to about a mebibyte, a
//! few thousand envelopes) with one [`RelayStore::put_envelopes`]. A
//! backend may write a batch without conditions where its API cannot
//! condition a batch (DynamoDB's `BatchWriteItem`): an envelope's sort key
//! ends with blake3 of its bytes, so a second write of a key writes the
//! identical row, and the envelope is still there exactly once.
//!
//! [`RelayStore`] is the contract; [`SledRelayStore`] is the embedded
//! default. One conformance suite (`node/tests/common/relay_conformance.rs`)
//! runs against every backend.
//!
//! The relay itself, the peer that writes here, is [`Relay`]: its settings
//! (`config.rs`), its start, outbox mirror and rebuild (`lifecycle.rs`,
//! `mirror.rs`), its key file (`key_file.rs`) and its HTTP endpoint
//! (`http.rs`).
//!
//! The module needs the crate feature `relay` (on with `cli`, `dynamodb`
//! and `cql`); the DynamoDB and CQL backends need their own features.

mod chunks;
mod config;
#[cfg(feature = "cql")]
mod cql;
#[cfg(feature = "dynamodb")]
mod dynamo;
mod http;
mod key_file;
mod lifecycle;
mod mirror;
mod retry;
mod sled_backend;

use std::future::Future;

use concord_core::{AuthorId, BlobHash, Envelope, Genesis, GovHead, Hlc, RoomId};

use crate::error::NodeError;

pub use config::{RelayConfig, StoreConfig};
#[cfg(feature = "cql")]
pub use cql::{CqlOptions, CqlRelayStore, CqlRetryPolicy};
#[cfg(feature = "dynamodb")]
pub use dynamo::DynamoRelayStore;
pub use lifecycle::{Relay, RelayReplicaStore};
pub use retry::RetryPolicy;
pub use sled_backend::SledRelayStore;

/// Errors of starting or running a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The config is wrong; nothing was started.
    #[error("relay config: {0}")]
    Config(String),
    /// The relay store failed.
    #[error(transparent)]
    Store(#[from] RelayStoreError),
    /// The node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A local file or socket failed.
    #[error("{0}")]
    Io(String),
}

impl From<concord_core::Error> for RelayError {
    fn from(e: concord_core::Error) -> Self {
        RelayError::Node(NodeError::Core(e))
    }
}

impl From<concord_core::StoreError> for RelayError {
    fn from(e: concord_core::StoreError) -> Self {
        RelayError::Node(NodeError::Core(e.into()))
    }
}

/// Errors of a relay store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayStoreError {
    /// The backend could not be reached or refused for now (throttling, a
    /// timeout, a node down): the same call may succeed later.
    #[error("relay store unavailable: {0}")]
    Unavailable(String),
    /// A stored record failed to decode.
    #[error("corrupt relay store record: {0}")]
    Corrupt(String),
    /// The store could not be opened or set up (a wrong path, table or
    /// credentials).
    #[error("relay store setup: {0}")]
    Setup(String),
    /// A blob's bytes do not hash (blake3) to the hash it was to be stored
    /// under; nothing was written.
    #[error("blob bytes do not hash to the blob's key")]
    WrongHash,
    /// A value is larger than the store accepts.
    #[error("{what} of {len} bytes is larger than the store accepts ({max})")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl RelayStoreError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RelayStoreError::Unavailable(_))
    }
}

/// Result of the relay store API.
pub type StoreResult<T> = std::result::Result<T, RelayStoreError>;

/// The largest blob any backend accepts: a sealed blob is a 16-byte nonce
/// and at most [`concord_core::MAX_BLOB_BYTES`] of content; the slack
/// covers that nonce with room to spare.
pub const MAX_STORED_BLOB_BYTES: usize = concord_core::MAX_BLOB_BYTES + 64;

/// Refuses a blob larger than [`MAX_STORED_BLOB_BYTES`], or one whose
/// bytes do not hash to `hash`: every backend checks a put the same way,
/// before it writes anything.
fn check_blob(hash: &BlobHash, blob: &[u8]) -> StoreResult<()> {
    if blob.len() > MAX_STORED_BLOB_BYTES {
        return Err(RelayStoreError::TooLarge {
            what: "blob",
            len: blob.len(),
            max: MAX_STORED_BLOB_BYTES,
        });
    }
    if !hashes_to(hash, blob) {
        return Err(RelayStoreError::WrongHash);
    }
    Ok(())
}

/// Whether `blob` is the blob `hash` names.
fn hashes_to(hash: &BlobHash, blob: &[u8]) -> bool {
    blake3::hash(blob).as_bytes() == hash.as_bytes()
}

/// Refuses a governance change larger than
/// [`concord_core::MAX_GOV_CHANGE_BYTES`]: no replica would accept it, so
/// no backend keeps it, and every backend refuses it the same way.
fn check_gov_change_len(change: &[u8]) -> StoreResult<()> {
    if change.len() > concord_core::MAX_GOV_CHANGE_BYTES {
        return Err(RelayStoreError::TooLarge {
            what: "governance change",
            len: change.len(),
            max: concord_core::MAX_GOV_CHANGE_BYTES,
        });
    }
    Ok(())
}

/// What an idempotent write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The key was absent and is now written.
    Inserted,
    /// The key was present already; nothing changed.
    AlreadyPresent,
}

/// Where an envelope sits inside its partition: the sort key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvelopeKey {
    /// The envelope's stamp.
    pub hlc: Hlc,
    /// Its author.
    pub author: AuthorId,
    /// blake3 of the envelope bytes.
    pub id: [u8; 32],
}

impl EnvelopeKey {
    /// Encoded length: hlc (8) ‖ author (32) ‖ id (32).
    pub const LEN: usize = 72;

    /// Big-endian bytes, so byte order is sort order.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.hlc.as_u64().to_be_bytes());
        out[8..40].copy_from_slice(self.author.as_bytes());
        out[40..].copy_from_slice(&self.id);
        out
    }

    /// Decodes [`EnvelopeKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> StoreResult<Self> {
        let corrupt = || RelayStoreError::Corrupt("envelope sort key".into());
        if bytes.len() != Self::LEN {
            return Err(corrupt());
        }
        let hlc = u64::from_be_bytes(bytes[..8].try_into().map_err(|_| corrupt())?);
        Ok(Self {
            hlc: Hlc::from_u64(hlc),
            author: AuthorId::from_bytes(bytes[8..40].try_into().map_err(|_| corrupt())?),
            id: bytes[40..].try_into().map_err(|_| corrupt())?,
        })
    }
}

/// Where a range read of one envelope partition starts, and which way it
/// goes: what [`RelayStore::envelopes`] and [`RelayStore::last_before`] ask
/// of a wide-column backend.
#[cfg_attr(not(any(feature = "dynamodb", feature = "cql")), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
enum Bound {
    /// From the first key, forward.
    Start,
    /// Strictly after the key, forward.
    After(EnvelopeKey),
    /// Strictly before the key, backward (newest first).
    Before(EnvelopeKey),
}

#[cfg_attr(not(any(feature = "dynamodb", feature = "cql")), allow(dead_code))]
impl Bound {
    /// The start of [`RelayStore::envelopes`]: after `after`, or the first key.
    fn after(after: Option<EnvelopeKey>) -> Self {
        after.map_or(Bound::Start, Bound::After)
    }
}

/// One envelope as the relay keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// Partition: the room.
    pub room: RoomId,
    /// Partition: the bucket.
    pub bucket: u32,
    /// Sort key.
    pub key: EnvelopeKey,
    /// The signed envelope.
    pub bytes: Vec<u8>,
}

impl StoredEnvelope {
    /// The row of a verified envelope.
    pub fn of(envelope: &Envelope) -> Self {
        Self {
            room: envelope.room(),
            bucket: envelope.bucket(),
            key: EnvelopeKey {
                hlc: envelope.hlc(),
                author: envelope.author(),
                id: *blake3::hash(envelope.as_bytes()).as_bytes(),
            },
            bytes: envelope.as_bytes().to_vec(),
        }
    }
}

/// The relay's durable store. Every backend passes the conformance suite.
///
/// Methods return `Send` futures so a relay can call them from any task.
pub trait RelayStore: Send + Sync + 'static {
    /// A short name for logs and metrics ("sled", "dynamodb", "cql").
    fn backend(&self) -> &'static str;

    /// Records a room the relay serves.
    fn put_room(&self, genesis: &Genesis) -> impl Future<Output = StoreResult<Written>> + Send;

    /// Every room the relay serves.
    fn rooms(&self) -> impl Future<Output = StoreResult<Vec<Genesis>>> + Send;

    /// Writes an envelope if its key is absent.
    fn put_envelope(
        &self,
        envelope: &StoredEnvelope,
    ) -> impl Future<Output = StoreResult<Written>> + Send;

    /// Writes a batch of envelopes (one sync flight) and records their
    /// buckets. Afterwards every envelope of the batch is present exactly
    /// once, whatever the batch repeats and whatever was there before; a
    /// batch that failed may have been written in part, and sending it
    /// again is the way to finish it. As with [`RelayStore::put_envelope`],
    /// no envelope is ever stored whose bucket [`RelayStore::buckets`]
    /// would miss.
    ///
    /// The default writes one envelope at a time; backends override it
    /// with their batched write.
    fn put_envelopes(
        &self,
        batch: &[StoredEnvelope],
    ) -> impl Future<Output = StoreResult<()>> + Send {
        async move {
            for envelope in batch {
                self.put_envelope(envelope).await?;
            }
            Ok(())
        }
    }

    /// The buckets of `room` that hold envelopes, oldest first.
    fn buckets(&self, room: RoomId) -> impl Future<Output = StoreResult<Vec<u32>>> + Send;

    /// Up to `limit` envelopes of one partition in sort order, strictly
    /// after `after` (from the start if `None`).
    fn envelopes(
        &self,
        room: RoomId,
        bucket: u32,
        after: Option<EnvelopeKey>,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Vec<StoredEnvelope>>> + Send;

    /// Up to `limit` envelopes of one partition strictly before `before`,
    /// newest first: "the last N before T", one range read.
    fn last_before(
        &self,
        room: RoomId,
        bucket: u32,
        before: EnvelopeKey,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Vec<StoredEnvelope>>> + Send;

    /// Writes a blob if absent. `hash` is blake3 of `blob`; a blob that
    /// does not hash to it is refused with [`RelayStoreError::WrongHash`],
    /// one larger than [`MAX_STORED_BLOB_BYTES`] with
    /// [`RelayStoreError::TooLarge`], and neither writes anything.
    fn put_blob(
        &self,
        room: RoomId,
        hash: BlobHash,
        blob: &[u8],
    ) -> impl Future<Output = StoreResult<Written>> + Send;

    /// A blob, if held: whole, and hashing to `hash`, or else
    /// [`RelayStoreError::Corrupt`]. A blob whose write has not finished is
    /// not held.
    fn blob(
        &self,
        room: RoomId,
        hash: BlobHash,
    ) -> impl Future<Output = StoreResult<Option<Vec<u8>>>> + Send;

    /// Erases a blob (its message was deleted) and everything stored for it,
    /// chunks of a write cut short included; returns whether it was held.
    fn erase_blob(
        &self,
        room: RoomId,
        hash: BlobHash,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Writes a signed governance change (`CNCV`, at most
    /// `concord_core::MAX_GOV_CHANGE_BYTES`) under its head if absent.
    fn put_governance(
        &self,
        room: RoomId,
        head: GovHead,
        change: &[u8],
    ) -> impl Future<Output = StoreResult<Written>> + Send;

    /// Every governance change stored for `room`, in no particular order
    /// (the replica orders them by their dependencies).
    fn governance(&self, room: RoomId) -> impl Future<Output = StoreResult<Vec<Vec<u8>>>> + Send;
}
