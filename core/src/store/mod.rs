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
pub use sled_store::{SledStore, DEFAULT_SLED_CACHE_BYTES, SLED_LOCK_WAIT};
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
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets `key` to `value`.
    pub fn put(&mut self, tree: Tree, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.insert((tree, key.into()), Some(value.into()));
    }
    /// Removes `key`.
    pub fn delete(&mut self, tree: Tree, key: impl Into<Vec<u8>>) {
        self.writes.insert((tree, key.into()), None);
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
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Tree, &[u8], Option<&[u8]>)> {
        self.writes.iter().map(|((t, k), v)| (*t, k.as_slice(), v.as_deref()))
    }
    pub(crate) fn into_writes(self) -> impl Iterator<Item = (Tree, Vec<u8>, Option<Vec<u8>>)> {
        self.writes.into_iter().map(|((t, k), v)| (t, k, v))
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
