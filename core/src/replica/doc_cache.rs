//! The bounded cache of author documents in memory: loading a document
//! from its stored envelopes, and dropping the least recently used ones
//! beyond a count and an item budget (sparing those the last transaction
//! used).

use std::collections::HashSet;

use super::tx::{DocKey, Tx};
use super::{corrupt, Replica};
use crate::doc::AuthorDoc;
use crate::envelope::Envelope;
use crate::error::Result;
use crate::store::tables;
use crate::store::{KeyRange, Order, Store, Tree};

/// Author documents kept in memory at most, by default. Each holds one
/// author's changes in one bucket; the least recently used are dropped first
/// and rebuilt from their envelopes when needed again.
pub const DEFAULT_DOC_CACHE: usize = 256;

/// Items the cached author documents may hold in all, by default: each item
/// one change an author wrote (a post, edit, delete, reaction or read
/// marker), about 400 bytes in memory while it is live, so about 25 MiB.
/// The documents a transaction used stay whatever their size (a busy day's
/// document is the one every message touches); the least recently used of
/// the others go first.
pub const DEFAULT_DOC_CACHE_ITEMS: u64 = 1 << 16;

/// When a cached document was last used, and how many items it holds.
#[derive(Clone, Copy, Debug)]
pub(super) struct DocUse {
    pub(super) tick: u64,
    pub(super) items: u64,
}

impl<S: Store> Replica<S> {
    /// Ensures the document is in memory, rebuilding it from stored envelopes.
    pub(super) fn load_doc(&mut self, tx: &mut Tx, dk: DocKey) -> Result<()> {
        self.doc_tick += 1;
        tx.used.insert(dk);
        if self.docs.contains_key(&dk) {
            if let Some(used) = self.doc_use.get_mut(&dk) {
                used.tick = self.doc_tick;
            }
            return Ok(());
        }
        let (room, bucket, author) = dk;
        let mut doc = AuthorDoc::new(&author);
        let prefix = tables::doc_key(&room, bucket, &author);
        let stored = self.store.scan(
            Tree::Envelopes,
            &KeyRange::prefix(&prefix),
            Order::Ascending,
            usize::MAX,
        )?;
        if stored.is_empty() && self.store.get(Tree::Docs, &prefix)?.is_none() {
            tx.new_docs.insert(dk);
        }
        for (_, v) in stored {
            let env = Envelope::from_stored_bytes(&v).map_err(|e| corrupt(Tree::Envelopes, e))?;
            let (start, end) = env.clock_range();
            doc.apply_bytes(env.update(), start, end).map_err(|e| corrupt(Tree::Envelopes, e))?;
        }
        // What the stored envelopes say is already rendered.
        doc.take_changes();
        let items = u64::from(doc.next_clock());
        self.doc_use.insert(dk, DocUse { tick: self.doc_tick, items });
        self.docs.insert(dk, doc);
        Ok(())
    }

    /// Drops the least recently used documents while the cache holds more
    /// documents or more items than it may, sparing those in `keep` (the
    /// ones the last transaction used, which its next likely uses again).
    /// Dropped documents are durable in `envelopes-1` and reload on their
    /// next use.
    pub(super) fn trim_doc_cache(&mut self, keep: &HashSet<DocKey>) {
        let mut items: u64 = self.doc_use.values().map(|u| u.items).sum();
        if self.docs.len() <= self.doc_cache && items <= self.doc_cache_items {
            return;
        }
        let mut by_use: Vec<(u64, DocKey)> = self
            .doc_use
            .iter()
            .filter(|(k, _)| !keep.contains(k))
            .map(|(k, u)| (u.tick, *k))
            .collect();
        by_use.sort_unstable();
        for (_, dk) in by_use {
            if self.docs.len() <= self.doc_cache && items <= self.doc_cache_items {
                break;
            }
            self.docs.remove(&dk);
            if let Some(u) = self.doc_use.remove(&dk) {
                items -= u.items;
            }
        }
    }

    /// Sets how many author documents stay in memory (at least one).
    pub fn set_doc_cache(&mut self, docs: usize) {
        self.doc_cache = docs.max(1);
        self.trim_doc_cache(&HashSet::new());
    }

    /// Sets how many items the cached author documents may hold in all
    /// (default [`DEFAULT_DOC_CACHE_ITEMS`]). The documents the last
    /// transaction used stay, even if they alone hold more; the least
    /// recently used of the others go first.
    pub fn set_doc_cache_items(&mut self, items: u64) {
        self.doc_cache_items = items;
        self.trim_doc_cache(&HashSet::new());
    }

    /// How many items the cached author documents hold in all.
    pub fn cached_doc_items(&self) -> u64 {
        self.doc_use.values().map(|u| u.items).sum()
    }

    /// How many author documents are in memory now.
    pub fn cached_docs(&self) -> usize {
        self.docs.len()
    }
}
