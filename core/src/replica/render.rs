//! Rendering what a transaction changed, and erasure.
//!
//! Only the message ids and read markers a transaction touched are
//! rendered again ([`view::render_message`] over the bucket's author
//! documents) and compared with the stored row: a new row is staged, a row
//! that leaves (deleted, or taken over by a smaller claim on its id) is
//! removed with its blobs and body in the same batch ([`Replica::erase_row`]:
//! where delete and edit erase content), and tombstones are recorded.

use std::collections::BTreeSet;

use super::e2ee::Opened;
use super::query::decode_tombstone;
use super::subscription::lock;
use super::tx::Tx;
use super::{corrupt, Replica};
use crate::blob;
use crate::crypto::megolm::{self, ContentKind, SessionId};
use crate::doc::AuthorDoc;
use crate::doc::MAX_REACTION_BYTES;
use crate::error::Result;
use crate::ids::{AuthorId, BlobHash, Cursor, MessageId, RoomId, SortKey};
use crate::store::tables;
use crate::store::{KeyRange, Order, Store, Tree};
use crate::view::{self, MessageRender, Row, TimelineDiff};

/// Whether blob bytes may be a message's body: text in an unencrypted
/// room; in an encrypted room, an encrypted blob (whether it decrypts, and
/// to what, only a reader can tell; see [`Replica::stage_body_of`]).
pub(super) fn valid_body(encrypted: bool, blob: &[u8]) -> bool {
    if encrypted {
        megolm::parse_blob(blob).is_ok()
    } else {
        blob::body_text(blob).is_some()
    }
}

/// A message that waits for a room key, found while rendering.
pub(super) struct Wait {
    pub(super) bucket: u32,
    pub(super) id: MessageId,
    pub(super) owner: AuthorId,
    pub(super) session: SessionId,
    pub(super) index: u32,
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
        let mut affected = tx.affected.remove(&(*room, bucket)).unwrap_or_default();
        let listening = lock(&self.listeners).values().any(|(r, _)| r == room);
        let mut diffs = DiffSink { listening, diffs: Vec::new() };
        let encrypted = self.is_encrypted(room)?;
        if encrypted {
            // Room keys for this device first: the messages they unlock
            // render below, in the same transaction.
            for (sender, keys) in std::mem::take(&mut affected.shares) {
                self.load_doc(tx, (*room, bucket, sender))?;
                for session in self.receive_room_keys(tx, room, bucket, &sender, &keys)? {
                    for (b, id) in self.waiting_for(tx, room, &session)? {
                        self.clear_wait(tx, room, &session, b, &id);
                        if b == bucket {
                            affected.ids.insert(id);
                            tx.unlocked.insert((*room, id));
                        }
                    }
                }
            }
            for (requester, keys) in std::mem::take(&mut affected.requests) {
                self.load_doc(tx, (*room, bucket, requester))?;
                self.answer_key_requests(tx, room, bucket, &requester, &keys)?;
            }
        }
        if !affected.ids.is_empty() || !affected.reads.is_empty() {
            let authors = self.bucket_authors(tx, room, bucket)?;
            for author in &authors {
                self.load_doc(tx, (*room, bucket, *author))?;
            }
            let docs: Vec<(AuthorId, &AuthorDoc)> = authors
                .iter()
                .filter_map(|a| self.docs.get(&(*room, bucket, *a)).map(|d| (*a, d)))
                .collect();
            // Reactions: in an encrypted room each is decrypted; one whose
            // key is not held waits (and is asked for) like a body.
            let mut reaction_waits: Vec<Wait> = Vec::new();
            let renders: Vec<(MessageId, MessageRender)> = affected
                .ids
                .iter()
                .map(|id| {
                    let mut reveal = |author: &AuthorId, suffix: &str, value: Option<&[u8]>| {
                        if !encrypted {
                            return Some(suffix.to_owned());
                        }
                        let sealed = value?.get(8..)?;
                        match self.open_content(
                            Some(tx),
                            room,
                            author,
                            id,
                            ContentKind::Reaction,
                            sealed,
                        ) {
                            Ok(Opened::Plain(emoji)) => String::from_utf8(emoji)
                                .ok()
                                .filter(|e| !e.is_empty() && e.len() <= MAX_REACTION_BYTES),
                            Ok(Opened::Waiting { session, index }) => {
                                reaction_waits.push(Wait {
                                    bucket,
                                    id: *id,
                                    owner: *author,
                                    session,
                                    index,
                                });
                                None
                            }
                            _ => None,
                        }
                    };
                    (*id, view::render_message(bucket, id, &docs, &mut reveal))
                })
                .collect();
            tx.waits.extend(reaction_waits);
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
                if is_body && !valid_body(encrypted, &b) {
                    continue;
                }
                let tkey = tables::timeline_key(room, &key);
                self.stage_blob(tx, room, bucket, &hash, &b)?;
                if is_body {
                    self.stage_body_of(tx, room, bucket, &key, &hash, &b)?;
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
        // What waits for a room key is recorded, and asked for.
        for w in std::mem::take(&mut tx.waits) {
            self.wait_for_key(tx, room, w)?;
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
                if orow != nrow || tx.unlocked.remove(&(*room, *id)) {
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
        let encrypted = self.is_encrypted(room)?;
        for (i, hash) in row.blobs().enumerate() {
            let is_body = i == 0;
            let bkey = tables::blob_key(room, hash);
            if self.staged_get(Some(&tx.batch), Tree::Blobs, &bkey)?.is_some() {
                continue;
            }
            let offered = tx.blobs.get_mut(&(*room, bucket)).and_then(|m| m.remove(hash));
            let wkey = tables::wanted_blob_key(room, bucket, hash);
            match offered {
                Some(b) if !is_body || valid_body(encrypted, &b) => {
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
        let held = self.staged_get(Some(&tx.batch), Tree::Bodies, &tkey)?;
        if held.is_some_and(|v| v.first() == Some(&crate::crypto::rest::BODY_TEXT)) {
            return Ok(());
        }
        if let Some(body) = self.read_blob(Some(tx), room, &row.body)? {
            self.stage_body_of(tx, room, bucket, key, &row.body, &body)?;
        }
        Ok(())
    }

    /// Stages the body of the live message at `key` from its body blob:
    /// the text; in an encrypted room the decrypted text, or "waiting for
    /// key" while this device holds no key for it; nothing for a body that
    /// is not what the post says.
    pub(super) fn stage_body_of(
        &self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
        key: &SortKey,
        hash: &BlobHash,
        blob: &[u8],
    ) -> Result<()> {
        let tkey = tables::timeline_key(room, key);
        if !self.is_encrypted(room)? {
            match blob::body_text(blob) {
                Some(text) => self.stage_body(tx, room, key, hash, text.as_bytes())?,
                None => tx.batch.delete(Tree::Bodies, tkey),
            }
            return Ok(());
        }
        if self.is_blind() {
            // A relay keeps the ciphertext it cannot read, and no body.
            return Ok(());
        }
        if let Some(text) = tx.own_bodies.get(hash).cloned() {
            return self.stage_body(tx, room, key, hash, &text);
        }
        match self.open_content(Some(tx), room, &key.author, &key.id, ContentKind::Body, blob)? {
            Opened::Plain(text)
                if text.len() <= blob::MAX_BODY_BYTES && std::str::from_utf8(&text).is_ok() =>
            {
                self.stage_body(tx, room, key, hash, &text)?;
            }
            Opened::Waiting { session, index } => {
                self.stage_waiting_body(tx, room, key);
                tx.waits.push(Wait { bucket, id: key.id, owner: key.author, session, index });
            }
            _ => tx.batch.delete(Tree::Bodies, tkey),
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
