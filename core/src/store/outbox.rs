//! A transactional outbox over any [`Store`]: every commit also records, in
//! the same atomic batch, what it stored that a mirror of this replica must
//! copy (rooms, envelopes, blobs) and what it erased (blobs of deleted
//! messages). A relay wraps its replica's store in an [`OutboxStore`] and
//! drains the [`Outbox`] into its wide-column store.
//!
//! Because the records commit with the change they describe, a process
//! killed between the replica's commit and the mirror's write loses
//! nothing: the records are still in `outbox-1` when it restarts. A record
//! leaves the outbox only when [`Outbox::ack`] says the mirror holds it.
//!
//! Records are derived from the batch, so they follow the replica's own
//! decisions: an envelope is recorded when it is stored (applied, or pending
//! its causal past), a blob when a live message keeps it, an erasure when a
//! blob is dropped (its message was deleted or edited away, or its bucket
//! evicted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Entry, KeyRange, Order, SecretSlot, Store, Tree, WriteBatch};
use crate::envelope::{Delivery, Envelope, Genesis};
use crate::error::StoreError;
use crate::governance::GovChange;
use crate::ids::{BlobHash, RoomId};

const ROOM: u8 = 0;
const ENVELOPE: u8 = 1;
const BLOB: u8 = 2;
const ERASED: u8 = 3;
const GOVERNANCE: u8 = 4;

/// What a mirror must do to match one committed change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboxRecord {
    /// A room the replica now holds.
    Room(Genesis),
    /// An envelope the replica stored.
    Envelope(Envelope),
    /// A blob a live message keeps.
    Blob {
        /// Its room.
        room: RoomId,
        /// Its hash.
        hash: BlobHash,
        /// The blob bytes (nonce ‖ content).
        blob: Vec<u8>,
    },
    /// A blob the replica dropped: the mirror erases it too.
    Erased {
        /// Its room.
        room: RoomId,
        /// Its hash.
        hash: BlobHash,
    },
    /// A governance change the replica accepted.
    Governance(Box<GovChange>),
}

impl OutboxRecord {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            OutboxRecord::Room(genesis) => {
                out.push(ROOM);
                out.extend_from_slice(genesis.as_bytes());
            }
            OutboxRecord::Envelope(envelope) => {
                out.push(ENVELOPE);
                out.extend_from_slice(envelope.as_bytes());
            }
            OutboxRecord::Blob { room, hash, blob } => {
                out.push(BLOB);
                out.extend_from_slice(room.as_bytes());
                out.extend_from_slice(hash.as_bytes());
                out.extend_from_slice(blob);
            }
            OutboxRecord::Erased { room, hash } => {
                out.push(ERASED);
                out.extend_from_slice(room.as_bytes());
                out.extend_from_slice(hash.as_bytes());
            }
            OutboxRecord::Governance(change) => {
                out.push(GOVERNANCE);
                out.extend_from_slice(change.as_bytes());
            }
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt =
            |reason: &str| StoreError::Corrupt { tree: Tree::Outbox.name(), reason: reason.into() };
        let (&tag, rest) = bytes.split_first().ok_or_else(|| corrupt("empty record"))?;
        let room_hash = |rest: &[u8]| -> Result<(RoomId, BlobHash), StoreError> {
            let room: [u8; 32] =
                rest.get(..32).and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt("room"))?;
            let hash: [u8; 32] =
                rest.get(32..64).and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt("hash"))?;
            Ok((RoomId::from_bytes(room), BlobHash(hash)))
        };
        match tag {
            ROOM => Genesis::from_bytes(rest)
                .map(OutboxRecord::Room)
                .map_err(|e| corrupt(&format!("genesis: {e}"))),
            ENVELOPE => Envelope::from_stored_bytes(rest)
                .map(OutboxRecord::Envelope)
                .map_err(|e| corrupt(&format!("envelope: {e}"))),
            BLOB => {
                let (room, hash) = room_hash(rest)?;
                Ok(OutboxRecord::Blob { room, hash, blob: rest[64..].to_vec() })
            }
            ERASED => {
                let (room, hash) = room_hash(rest)?;
                Ok(OutboxRecord::Erased { room, hash })
            }
            GOVERNANCE => GovChange::from_bytes(rest)
                .map(|c| OutboxRecord::Governance(Box::new(c)))
                .map_err(|e| corrupt(&format!("governance change: {e}"))),
            _ => Err(corrupt("unknown record kind")),
        }
    }
}

/// Splits a `blobs-1` key into room and hash.
fn blob_key_parts(key: &[u8]) -> Option<(RoomId, BlobHash)> {
    let room: [u8; 32] = key.get(..32)?.try_into().ok()?;
    let hash: [u8; 32] = key.get(32..64)?.try_into().ok()?;
    Some((RoomId::from_bytes(room), BlobHash(hash)))
}

/// The records a batch implies, in a stable order (rooms, then envelopes,
/// blobs and erasures in key order).
fn records_of(batch: &WriteBatch) -> Vec<OutboxRecord> {
    let mut out = Vec::new();
    for (tree, key, value) in batch.iter() {
        let record = match (tree, value) {
            (Tree::Rooms, Some(v)) => Genesis::from_bytes(v).ok().map(OutboxRecord::Room),
            (Tree::Envelopes, Some(v)) => {
                Envelope::from_stored_bytes(v).ok().map(OutboxRecord::Envelope)
            }
            (Tree::Pending, Some(_)) => batch
                .plain(Tree::Pending, key)
                .and_then(|v| Delivery::from_bytes(v).ok())
                .map(|d| OutboxRecord::Envelope(d.envelope)),
            // Stored sealed; the mirror gets the blob as it travels.
            (Tree::Blobs, Some(_)) => blob_key_parts(key)
                .zip(batch.plain(Tree::Blobs, key))
                .map(|((room, hash), blob)| OutboxRecord::Blob { room, hash, blob: blob.to_vec() }),
            (Tree::Blobs, None) => {
                blob_key_parts(key).map(|(room, hash)| OutboxRecord::Erased { room, hash })
            }
            (Tree::Governance, Some(v)) => {
                GovChange::from_bytes(v).ok().map(|c| OutboxRecord::Governance(Box::new(c)))
            }
            _ => None,
        };
        out.extend(record);
    }
    out
}

/// A store that records, atomically with each commit, what a mirror must
/// copy or erase. Reads pass through.
pub struct OutboxStore<S: Store + Sync> {
    inner: Arc<S>,
    next: AtomicU64,
}

impl<S: Store + Sync> std::fmt::Debug for OutboxStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxStore").field("next", &self.next).finish_non_exhaustive()
    }
}

impl<S: Store + Sync> OutboxStore<S> {
    /// Wraps `inner`; records left from an earlier run stay in the outbox.
    pub fn new(inner: S) -> Result<Self, StoreError> {
        let last = inner.scan(Tree::Outbox, &KeyRange::prefix(&[]), Order::Descending, 1)?;
        let next = match last.first() {
            Some((k, _)) => seq_of(k)? + 1,
            None => 0,
        };
        Ok(Self { inner: Arc::new(inner), next: AtomicU64::new(next) })
    }

    /// A handle to read and acknowledge the records, from any thread.
    pub fn outbox(&self) -> Outbox<S> {
        Outbox { inner: self.inner.clone() }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    key.try_into().map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt {
        tree: Tree::Outbox.name(),
        reason: "sequence key".into(),
    })
}

impl<S: Store + Sync> Store for OutboxStore<S> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }

    fn scan(
        &self,
        tree: Tree,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan(tree, range, order, limit)
    }

    fn secret_slots(&self) -> Result<[Option<SecretSlot>; 2], StoreError> {
        self.inner.secret_slots()
    }

    fn write_secret_slot(&self, index: usize, slot: Option<SecretSlot>) -> Result<(), StoreError> {
        self.inner.write_secret_slot(index, slot)
    }

    fn commit(&self, mut batch: WriteBatch) -> Result<(), StoreError> {
        let records = records_of(&batch);
        // An erased blob must not linger here either: drop its copies that
        // wait for the mirror. The erasure itself still goes out, in case
        // the mirror already holds the blob.
        let erased: Vec<(RoomId, BlobHash)> = records
            .iter()
            .filter_map(|r| match r {
                OutboxRecord::Erased { room, hash } => Some((*room, *hash)),
                _ => None,
            })
            .collect();
        if !erased.is_empty() {
            let waiting = self.inner.scan(
                Tree::Outbox,
                &KeyRange::prefix(&[]),
                Order::Ascending,
                usize::MAX,
            )?;
            for (k, v) in waiting {
                if v.first() == Some(&BLOB)
                    && erased.iter().any(|(room, hash)| {
                        v.get(1..33) == Some(room.as_bytes())
                            && v.get(33..65) == Some(hash.as_bytes())
                    })
                {
                    batch.delete(Tree::Outbox, k);
                }
            }
        }
        // Only the replica's thread commits here, so sequence numbers are
        // taken in commit order; a failed commit leaves a gap, which is fine.
        let first = self.next.fetch_add(records.len() as u64, Ordering::SeqCst);
        for (i, record) in records.iter().enumerate() {
            batch.put(Tree::Outbox, (first + i as u64).to_be_bytes(), record.to_bytes());
        }
        self.inner.commit(batch)
    }
}

/// The records waiting for a mirror, oldest first.
pub struct Outbox<S: Store + Sync> {
    inner: Arc<S>,
}

impl<S: Store + Sync> Clone for Outbox<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<S: Store + Sync> std::fmt::Debug for Outbox<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl<S: Store + Sync> Outbox<S> {
    /// Up to `limit` records not yet acknowledged, in commit order, each
    /// with its sequence number.
    pub fn pending(&self, limit: usize) -> Result<Vec<(u64, OutboxRecord)>, StoreError> {
        self.inner
            .scan(Tree::Outbox, &KeyRange::prefix(&[]), Order::Ascending, limit)?
            .into_iter()
            .map(|(k, v)| Ok((seq_of(&k)?, OutboxRecord::from_bytes(&v)?)))
            .collect()
    }

    /// Removes records the mirror now holds.
    pub fn ack(&self, seqs: impl IntoIterator<Item = u64>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        for seq in seqs {
            batch.delete(Tree::Outbox, seq.to_be_bytes());
        }
        self.inner.commit(batch)
    }
}
