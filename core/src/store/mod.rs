//! Storage: a small ordered key-value interface over named trees, with a sled
//! backend ([`SledStore`]) and an in-memory twin ([`MemoryStore`]) that pass
//! the same conformance suite.
//!
//! The replica's logic lives above this trait, so both backends behave the
//! same by construction; the trait only has to get ordering, atomicity and
//! durability right. Every tree and its key and value layout is documented in
//! [`tables`].

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::error::StoreError;

mod memory;
pub(crate) mod migrations;
mod outbox;
mod sled_store;
pub(crate) mod tables;

#[cfg(test)]
mod conformance;

pub use memory::MemoryStore;
pub use outbox::{Outbox, OutboxRecord, OutboxStore};
pub use sled_store::{SledStore, DEFAULT_SLED_CACHE_BYTES, SECRET_FILE, SLED_LOCK_WAIT};
pub use tables::Tree;

/// A key and its value, as scans return them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A range of keys within one tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// Lower bound.
    pub start: Bound<Vec<u8>>,
    /// Upper bound.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        Self { start: Bound::Included(prefix.to_vec()), end: prefix_end(prefix) }
    }

    /// Keys in `[start, end)`.
    pub fn between(start: &[u8], end: &[u8]) -> Self {
        Self { start: Bound::Included(start.to_vec()), end: Bound::Excluded(end.to_vec()) }
    }

    pub(crate) fn as_refs(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        fn map(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
            match b {
                Bound::Included(k) => Bound::Included(k.as_slice()),
                Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
                Bound::Unbounded => Bound::Unbounded,
            }
        }
        (map(&self.start), map(&self.end))
    }
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

/// Scan direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Smallest key first.
    Ascending,
    /// Largest key first.
    Descending,
}

/// Writes to apply atomically and durably. Within a batch the last write to
/// a key wins.
#[derive(Default, Debug, Clone)]
pub struct WriteBatch {
    writes: BTreeMap<(Tree, Vec<u8>), Option<Vec<u8>>>,
    /// What sealed values hold in the clear, for an outbox that mirrors
    /// them to a store that must serve them (a relay's). Never stored.
    plain: BTreeMap<(Tree, Vec<u8>), Vec<u8>>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets `key` to `value`.
    pub fn put(&mut self, tree: Tree, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        let key = key.into();
        self.plain.remove(&(tree, key.clone()));
        self.writes.insert((tree, key), Some(value.into()));
    }
    /// Sets `key` to the sealed `value`, remembering what it holds in the
    /// clear (`plain`) for an [`OutboxStore`]; only `value` is stored.
    pub(crate) fn put_sealed(&mut self, tree: Tree, key: Vec<u8>, value: Vec<u8>, plain: Vec<u8>) {
        self.plain.insert((tree, key.clone()), plain);
        self.writes.insert((tree, key), Some(value));
    }
    /// Removes `key`.
    pub fn delete(&mut self, tree: Tree, key: impl Into<Vec<u8>>) {
        let key = key.into();
        self.plain.remove(&(tree, key.clone()));
        self.writes.insert((tree, key), None);
    }
    /// What the sealed value staged at `key` holds in the clear.
    pub(crate) fn plain(&self, tree: Tree, key: &[u8]) -> Option<&[u8]> {
        self.plain.get(&(tree, key.to_vec())).map(Vec::as_slice)
    }
    /// What this batch will leave at `key`: `Some(Some(v))` written,
    /// `Some(None)` deleted, `None` untouched.
    pub fn get(&self, tree: Tree, key: &[u8]) -> Option<Option<&[u8]>> {
        self.writes.get(&(tree, key.to_vec())).map(|v| v.as_deref())
    }
    /// Whether the batch holds no writes.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
    /// Number of writes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }
    /// Every write: tree, key, and the value (`None` for a delete).
    pub fn iter(&self) -> impl Iterator<Item = (Tree, &[u8], Option<&[u8]>)> {
        self.writes.iter().map(|((t, k), v)| (*t, k.as_slice(), v.as_deref()))
    }
    pub(crate) fn into_writes(self) -> impl Iterator<Item = (Tree, Vec<u8>, Option<Vec<u8>>)> {
        self.writes.into_iter().map(|((t, k), v)| (t, k, v))
    }
}

/// One of a store's two secret slots: a 32-byte key-encryption key and the
/// sequence number that names it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretSlot {
    /// Which key this is; the replica records the one its data is sealed
    /// under.
    pub seq: u64,
    /// The key.
    pub key: [u8; 32],
}

impl std::fmt::Debug for SecretSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("SecretSlot").field("seq", &self.seq).finish_non_exhaustive()
    }
}

/// Bytes of one encoded secret slot: seq u64 ‖ key ‖ the first 8 bytes of
/// blake3(seq ‖ key). All zeros is an empty slot.
pub(crate) const SECRET_SLOT_BYTES: usize = 8 + 32 + 8;

impl SecretSlot {
    pub(crate) fn encode(slot: Option<&SecretSlot>) -> [u8; SECRET_SLOT_BYTES] {
        let mut out = [0u8; SECRET_SLOT_BYTES];
        if let Some(s) = slot {
            out[..8].copy_from_slice(&s.seq.to_be_bytes());
            out[8..40].copy_from_slice(&s.key);
            let check = blake3::hash(&out[..40]);
            out[40..].copy_from_slice(&check.as_bytes()[..8]);
        }
        out
    }

    /// `None` for an empty slot, or one a crash tore while it was written.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Option<Self>, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt { tree: "secret", reason: reason.into() };
        if bytes.len() != SECRET_SLOT_BYTES {
            return Err(corrupt("slot length"));
        }
        if bytes.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        // A slot torn by a crash while it was written: the replica writes
        // only a slot that holds no key it uses, so a torn one is empty.
        if blake3::hash(&bytes[..40]).as_bytes()[..8] != bytes[40..] {
            return Ok(None);
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&bytes[..8]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[8..40]);
        Ok(Some(Self { seq: u64::from_be_bytes(seq), key }))
    }
}

/// An ordered key-value store of named trees.
///
/// **Contract:** [`Store::commit`] applies the whole batch or nothing, and
/// returns only once the batch is durable (for sled: flushed to disk). Reads
/// see every committed batch.
pub trait Store: Send {
    /// The value at `key`.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` entries within `range`, in `order`.
    fn scan(
        &self,
        tree: Tree,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;

    /// Applies `batch` atomically and durably.
    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError>;

    /// The two secret slots. They hold the key-encryption key that content
    /// at rest is sealed under, outside the log-structured trees: a
    /// log-structured store keeps old values in old segments, so a key
    /// destroyed there would not be gone. A slot that was torn by a crash
    /// is an error only if it was never written whole; the replica writes
    /// one slot at a time (`docs/architecture.md`, "Crypto-shredding").
    fn secret_slots(&self) -> Result<[Option<SecretSlot>; 2], StoreError>;

    /// Overwrites secret slot `index` (0 or 1) in place, or clears it with
    /// `None`, durably before returning.
    fn write_secret_slot(&self, index: usize, slot: Option<SecretSlot>) -> Result<(), StoreError>;
}

impl<S: Store + Sync + ?Sized> Store for std::sync::Arc<S> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(tree, key)
    }
    fn scan(
        &self,
        tree: Tree,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        (**self).scan(tree, range, order, limit)
    }
    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        (**self).commit(batch)
    }
    fn secret_slots(&self) -> Result<[Option<SecretSlot>; 2], StoreError> {
        (**self).secret_slots()
    }
    fn write_secret_slot(&self, index: usize, slot: Option<SecretSlot>) -> Result<(), StoreError> {
        (**self).write_secret_slot(index, slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_prefix_end_carries_over_ff() {
        assert_eq!(prefix_end(&[1, 2]), Bound::Excluded(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Bound::Excluded(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), Bound::Unbounded);
    }
}
