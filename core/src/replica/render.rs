//! Rendering what a transaction changed, and erasure.
//!
//! Only the message ids and read markers a transaction touched are
//! rendered again ([`view::render_message`] over the bucket's author
//! documents) and compared with the stored row: a new row is staged, a row
//! that leaves (deleted, or taken over by a smaller claim on its id) is
//! removed with its blobs and body in the same batch ([`Replica::erase_row`]:
//! where delete and edit erase content), and tombstones are recorded.

use std::collections::BTreeSet;

use super::query::decode_tombstone;
use super::subscription::lock;
use super::tx::Tx;
use super::{corrupt, Replica};
use crate::blob;
use crate::doc::AuthorDoc;
use crate::error::Result;
use crate::ids::{AuthorId, BlobHash, Cursor, MessageId, RoomId, SortKey};
use crate::store::tables;
use crate::store::{KeyRange, Order, Store, Tree};
use crate::view::{self, MessageRender, Row, TimelineDiff};

/// Whether blob bytes hold a body a message may show.
pub(super) fn valid_body(blob: &[u8]) -> bool {
    blob::body_text(blob).is_some()
}

/// The diffs of one bucket's refresh, built only while someone listens to
/// the room (building one reads the message's body).
pub(super) struct DiffSink {
    listening: bool,
    diffs: Vec<TimelineDiff>,
}

impl DiffSink {
    fn push(&mut self, make: impl FnOnce() -> Result<TimelineDiff>) -> Result<()> {
        if self.listening {
            self.diffs.push(make()?);
        }
        Ok(())
    }
}

/// Decodes a `wanted-blobs-1` value: the wanting message and whether the
/// blob is its body.
pub(super) fn decode_wanted(value: &[u8]) -> Result<(SortKey, bool)> {
    match value.split_last() {
        Some((&kind, key)) if kind <= 1 => {
            Ok((SortKey::from_bytes(key).map_err(|e| corrupt(Tree::WantedBlobs, e))?, kind == 0))
        }
        _ => Err(corrupt(Tree::WantedBlobs, "bad record")),
    }
}

impl<S: Store> Replica<S> {
    pub(super) fn bucket_authors(
        &self,
        tx: &Tx,
        room: &RoomId,
        bucket: u32,
    ) -> Result<BTreeSet<AuthorId>> {
        let prefix = tables::bucket_prefix(room, bucket);
        let mut authors = BTreeSet::new();
        for (k, _) in
            self.store.scan(Tree::Docs, &KeyRange::prefix(&prefix), Order::Ascending, usize::MAX)?
        {
            authors.insert(
                tables::doc_key_author(&k).ok_or_else(|| corrupt(Tree::Docs, "short key"))?,
            );
        }
        // Documents this transaction changed may not be listed in `docs-1` yet.
        for (r, b, a) in tx.new_docs.iter().chain(tx.docs.iter()) {
            if r == room && *b == bucket {
                authors.insert(*a);
            }
        }
        Ok(authors)
    }

    /// Re-renders what a transaction affected in one bucket: only the changed
    /// messages and read markers, so its cost does not grow with the bucket.
    pub(super) fn refresh_bucket(&mut self, tx: &mut Tx, room: &RoomId, bucket: u32) -> Result<()> {
        let affected = tx.affected.remove(&(*room, bucket)).unwrap_or_default();
        let listening = lock(&self.listeners).values().any(|(r, _)| r == room);
        let mut diffs = DiffSink { listening, diffs: Vec::new() };
        if !affected.ids.is_empty() || !affected.reads.is_empty() {
            let authors = self.bucket_authors(tx, room, bucket)?;
            for author in &authors {
                self.load_doc(tx, (*room, bucket, *author))?;
            }
            let docs: Vec<(AuthorId, &AuthorDoc)> = authors
                .iter()
                .filter_map(|a| self.docs.get(&(*room, bucket, *a)).map(|d| (*a, d)))
                .collect();
            let renders: Vec<(MessageId, MessageRender)> = affected
                .ids
                .iter()
                .map(|id| (*id, view::render_message(bucket, id, &docs)))
                .collect();
            let reads: Vec<(AuthorId, Option<SortKey>)> = affected
                .reads
                .iter()
                .map(|a| {
                    let doc = docs.iter().find(|(author, _)| author == a);
                    (*a, doc.and_then(|(_, d)| view::render_read(bucket, d)))
                })
                .collect();
            for (id, render) in renders {
                self.stage_message(tx, room, bucket, &id, render, &mut diffs)?;
            }
            for (author, read) in reads {
                let key = tables::read_key(room, &author, bucket);
                match read {
                    Some(k) => tx.batch.put(Tree::Reads, key, k.to_bytes()),
                    None => tx.batch.delete(Tree::Reads, key),
                }
            }
        }
        // Blobs offered for messages that were already rendered (a duplicate
        // delivery, or blobs fetched by sync) fill what those messages want.
        if let Some(offered) = tx.blobs.remove(&(*room, bucket)) {
            for (hash, b) in offered {
                let wkey = tables::wanted_blob_key(room, bucket, &hash);
                let Some(wanted) = self.staged_get(Some(&tx.batch), Tree::WantedBlobs, &wkey)?
                else {
                    continue;
                };
                let (key, is_body) = decode_wanted(&wanted)?;
                if is_body && !valid_body(&b) {
                    continue;
                }
                let tkey = tables::timeline_key(room, &key);
                self.stage_blob(tx, room, bucket, &hash, &b)?;
                if let Some(text) = blob::body_text(&b).filter(|_| is_body) {
                    self.stage_body(tx, room, &key, &hash, text.as_bytes())?;
                }
                tx.batch.delete(Tree::WantedBlobs, wkey);
                if let Some(raw) = self.staged_get(Some(&tx.batch), Tree::Timeline, &tkey)? {
                    let row = Row::decode(&raw).map_err(|e| corrupt(Tree::Timeline, e))?;
                    diffs.push(|| {
                        Ok(TimelineDiff::Update(self.message(Some(tx), room, key, &row)?))
                    })?;
                }
            }
        }
        if !diffs.diffs.is_empty() {
            tx.diffs.entry(*room).or_default().extend(diffs.diffs);
        }
        Ok(())
    }

    /// Stages one message's new rendering against what the store holds: its
    /// timeline row, id index, blobs (kept, wanted or erased) and tombstones.
    pub(super) fn stage_message(
        &self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
        id: &MessageId,
        render: MessageRender,
        diffs: &mut DiffSink,
    ) -> Result<()> {
        let idkey = tables::message_id_key(room, id);
        let old_key = self
            .staged_get(Some(&tx.batch), Tree::MessageIds, &idkey)?
            .map(|raw| SortKey::from_bytes(&raw).map_err(|e| corrupt(Tree::MessageIds, e)))
            .transpose()?;
        let old = match old_key {
            Some(k) => {
                let raw = self
                    .staged_get(Some(&tx.batch), Tree::Timeline, &tables::timeline_key(room, &k))?
                    .ok_or_else(|| corrupt(Tree::Timeline, "message id points at no row"))?;
                Some((k, Row::decode(&raw).map_err(|e| corrupt(Tree::Timeline, e))?))
            }
            None => None,
        };
        match (old, render.row) {
            (None, None) => {}
            (Some((k, row)), None) => {
                self.erase_row(tx, room, bucket, &k, &row, &BTreeSet::new());
                tx.batch.delete(Tree::MessageIds, idkey);
                diffs.push(|| Ok(TimelineDiff::Remove { id: *id, cursor: Cursor(k) }))?;
            }
            (Some((ok, orow)), Some((nk, nrow))) if ok == nk => {
                if orow != nrow {
                    let keep: BTreeSet<BlobHash> = nrow.blobs().copied().collect();
                    self.erase_row(tx, room, bucket, &ok, &orow, &keep);
                    self.stage_row(tx, room, bucket, &nk, &nrow)?;
                    diffs.push(|| {
                        Ok(TimelineDiff::Update(self.message(Some(tx), room, nk, &nrow)?))
                    })?;
                }
            }
            (old, Some((nk, nrow))) => {
                // A smaller claim on the id took it over: the old row leaves.
                if let Some((ok, orow)) = old {
                    self.erase_row(tx, room, bucket, &ok, &orow, &BTreeSet::new());
                    diffs.push(|| Ok(TimelineDiff::Remove { id: *id, cursor: Cursor(ok) }))?;
                }
                tx.batch.put(Tree::MessageIds, idkey, nk.to_bytes());
                self.stage_row(tx, room, bucket, &nk, &nrow)?;
                diffs.push(|| {
                    Ok(TimelineDiff::Insert(self.message(Some(tx), room, nk, &nrow)?))
                })?;
            }
        }
        // Tombstones: exactly the rendered ones stay.
        let prefix = tables::tombstone_prefix(room, bucket, id);
        let stored = self.store.scan(
            Tree::Tombstones,
            &KeyRange::prefix(&prefix),
            Order::Ascending,
            usize::MAX,
        )?;
        for (k, v) in stored {
            let t = decode_tombstone(&k, &v)?;
            if !render.tombstones.contains(&t) {
                tx.batch.delete(Tree::Tombstones, k);
            }
        }
        for t in &render.tombstones {
            let mut value = Vec::with_capacity(16);
            value.extend_from_slice(&t.posted.as_u64().to_be_bytes());
            value.extend_from_slice(&t.deleted.as_u64().to_be_bytes());
            tx.batch.put(
                Tree::Tombstones,
                tables::tombstone_key(room, bucket, id, &t.author),
                value,
            );
        }
        Ok(())
    }

    /// Stages a row and its blobs: each blob is kept if already stored, stored
    /// if this transaction offered it (a body only if it is valid text), and
    /// otherwise listed as wanted.
    pub(super) fn stage_row(
        &self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
        key: &SortKey,
        row: &Row,
    ) -> Result<()> {
        tx.batch.put(Tree::Timeline, tables::timeline_key(room, key), row.encode());
        for (i, hash) in row.blobs().enumerate() {
            let is_body = i == 0;
            let bkey = tables::blob_key(room, hash);
            if self.staged_get(Some(&tx.batch), Tree::Blobs, &bkey)?.is_some() {
                continue;
            }
            let offered = tx.blobs.get_mut(&(*room, bucket)).and_then(|m| m.remove(hash));
            let wkey = tables::wanted_blob_key(room, bucket, hash);
            match offered {
                Some(b) if !is_body || valid_body(&b) => {
                    self.stage_blob(tx, room, bucket, hash, &b)?;
                    tx.batch.delete(Tree::WantedBlobs, wkey);
                }
                _ => {
                    let mut value = key.to_bytes().to_vec();
                    value.push(u8::from(!is_body));
                    tx.batch.put(Tree::WantedBlobs, wkey, value);
                }
            }
        }
        // The body's text, unless it is there already (an update that kept
        // the body: a reaction, a blob that arrived for an attachment).
        let tkey = tables::timeline_key(room, key);
        if self.staged_get(Some(&tx.batch), Tree::Bodies, &tkey)?.is_some() {
            return Ok(());
        }
        let body = self.read_blob(Some(tx), room, &row.body)?;
        if let Some(text) = body.as_deref().and_then(blob::body_text) {
            self.stage_body(tx, room, key, &row.body, text.as_bytes())?;
        }
        Ok(())
    }

    /// Removes a row and erases its blobs, except those in `keep` (still
    /// referenced by the row's next version).
    pub(super) fn erase_row(
        &self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
        key: &SortKey,
        row: &Row,
        keep: &BTreeSet<BlobHash>,
    ) {
        tx.batch.delete(Tree::Timeline, tables::timeline_key(room, key));
        if !keep.contains(&row.body) {
            tx.batch.delete(Tree::Bodies, tables::timeline_key(room, key));
        }
        for hash in row.blobs().filter(|h| !keep.contains(h)) {
            self.erase_blob(tx, room, bucket, hash);
            tx.batch.delete(Tree::WantedBlobs, tables::wanted_blob_key(room, bucket, hash));
            if let Some(offered) = tx.blobs.get_mut(&(*room, bucket)) {
                offered.remove(hash);
            }
        }
    }
}
