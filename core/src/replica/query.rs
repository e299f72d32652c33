//! Queries: pages of the timeline, messages by id, attachments, read
//! markers, unread counts, tombstones, whole-room snapshots and every
//! delivery held. Each reads only what it returns (a page reads its rows and
//! their bodies by two range scans), never the room's whole history.

use std::collections::BTreeMap;

use super::rest::StoredBody;
use super::tx::Tx;
use super::{corrupt, Replica};
use crate::blob;
use crate::envelope::{Delivery, Envelope};
use crate::error::Result;
use crate::ids::{AuthorId, BlobHash, Cursor, Hlc, MessageId, RoomId, SortKey};
use crate::store::tables;
use crate::store::{KeyRange, Order, Store, Tree};
use crate::view::{Message, Row, Tombstone};

/// Largest page a query returns; larger requests are clamped.
pub const MAX_PAGE: usize = 1000;

/// Where a page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// The newest messages.
    Latest,
    /// Messages strictly before the cursor.
    Before(Cursor),
    /// Messages strictly after the cursor.
    After(Cursor),
}

/// A page of messages, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The messages, newest first.
    pub messages: Vec<Message>,
    /// Whether more messages lie beyond this page in the direction asked.
    pub has_more: bool,
    /// Whether older history lies beyond what this replica keeps: it has
    /// been asked of peers (see [`Replica::history_wanted`]), and its
    /// messages will reach the timeline subscription as they arrive.
    pub fetching_older: bool,
}

/// Everything a room renders to, for comparing replicas: all live messages
/// (oldest first), all tombstones, and every author's read marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomSnapshot {
    /// Live messages, oldest first.
    pub messages: Vec<Message>,
    /// Tombstones, in timeline order.
    pub tombstones: Vec<Tombstone>,
    /// Each author's read marker.
    pub read_markers: BTreeMap<AuthorId, Cursor>,
}

/// A message from its row and its stored body text. Text is checked before
/// it is stored; text that still is not UTF-8 reads as absent rather than
/// failing the whole query.
pub(super) fn message_from(key: SortKey, row: &Row, body: Option<StoredBody>) -> Message {
    let (text, waiting_for_key) = match body {
        Some(StoredBody::Text(t)) => (String::from_utf8(t).ok(), false),
        Some(StoredBody::Waiting) => (None, true),
        None => (None, false),
    };
    Message {
        id: key.id,
        author: key.author,
        hlc: key.hlc,
        cursor: Cursor(key),
        body: text,
        waiting_for_key,
        attachments: row.attachments.clone(),
        reply_to: row.reply_to,
        edited: row.edited,
        reactions: row.reactions.clone(),
    }
}

pub(super) fn decode_tombstone(key: &[u8], value: &[u8]) -> Result<Tombstone> {
    let bad = || corrupt(Tree::Tombstones, "bad record");
    let id: [u8; 16] = key.get(36..52).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
    let author: [u8; 32] = key.get(52..84).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
    let posted: [u8; 8] = value.get(..8).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
    let deleted: [u8; 8] = value.get(8..16).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
    Ok(Tombstone {
        posted: Hlc::from_u64(u64::from_be_bytes(posted)),
        author: AuthorId::from_bytes(author),
        id: MessageId::from_bytes(id),
        deleted: Hlc::from_u64(u64::from_be_bytes(deleted)),
    })
}

impl<S: Store> Replica<S> {
    /// Every record of `room` in `tree` (keys begin with the room id).
    pub(super) fn room_records(
        &self,
        tree: Tree,
        room: &RoomId,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self.store.scan(
            tree,
            &KeyRange::prefix(room.as_bytes()),
            Order::Ascending,
            usize::MAX,
        )?)
    }

    /// A page of up to `limit` messages, newest first.
    pub fn page(&self, room: &RoomId, anchor: Anchor, limit: usize) -> Result<Page> {
        self.check_room(room)?;
        let limit = limit.min(MAX_PAGE);
        let prefix = room.as_bytes().to_vec();
        let with = |k: &SortKey| [prefix.as_slice(), &k.to_bytes()].concat();
        let (range, order) = match anchor {
            Anchor::Latest => (KeyRange::prefix(&prefix), Order::Descending),
            Anchor::Before(c) => (
                KeyRange {
                    start: std::ops::Bound::Included(prefix.clone()),
                    end: std::ops::Bound::Excluded(with(&c.0)),
                },
                Order::Descending,
            ),
            Anchor::After(c) => {
                let mut r = KeyRange::prefix(&prefix);
                r.start = std::ops::Bound::Excluded(with(&c.0));
                (r, Order::Ascending)
            }
        };
        let mut rows = self.store.scan(Tree::Timeline, &range, order, limit + 1)?;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let fetching_older = order == Order::Descending && !has_more && self.want_history(room);
        // The bodies of exactly these rows: one scan, in the rows' order, over
        // the keys they span, merged with the rows as both are sorted.
        let mut bodies = Vec::new();
        if let (Some((first, _)), Some((last, _))) = (rows.first(), rows.last()) {
            let (lo, hi) = if first <= last { (first, last) } else { (last, first) };
            let span = KeyRange {
                start: std::ops::Bound::Included(lo.clone()),
                end: std::ops::Bound::Included(hi.clone()),
            };
            bodies = self.store.scan(Tree::Bodies, &span, order, rows.len())?;
        }
        let mut bodies = bodies.into_iter().peekable();
        let mut messages = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let key = SortKey::from_bytes(&k[32..]).map_err(|e| corrupt(Tree::Timeline, e))?;
            let row = Row::decode(&v).map_err(|e| corrupt(Tree::Timeline, e))?;
            // Entries without a row (none in a consistent store) are skipped.
            let ahead = |bk: &Vec<u8>| if order == Order::Ascending { *bk < k } else { *bk > k };
            while bodies.next_if(|(bk, _)| ahead(bk)).is_some() {}
            let body = match bodies.next_if(|(bk, _)| *bk == k) {
                Some((_, value)) => Some(self.open_body(None, room, key.hlc, &k, &value)?),
                None => None,
            };
            messages.push(message_from(key, &row, body));
        }
        if order == Order::Ascending {
            messages.reverse();
        }
        Ok(Page { messages, has_more, fetching_older })
    }

    /// A live message by id.
    pub fn message_by_id(&self, room: &RoomId, id: &MessageId) -> Result<Option<Message>> {
        self.check_room(room)?;
        let Some(raw) = self.store.get(Tree::MessageIds, &tables::message_id_key(room, id))? else {
            return Ok(None);
        };
        let key = SortKey::from_bytes(&raw).map_err(|e| corrupt(Tree::MessageIds, e))?;
        let Some(row) = self.store.get(Tree::Timeline, &tables::timeline_key(room, &key))? else {
            return Err(corrupt(Tree::Timeline, "message id points at no row"));
        };
        let row = Row::decode(&row).map_err(|e| corrupt(Tree::Timeline, e))?;
        Ok(Some(self.message(None, room, key, &row)?))
    }

    /// An attachment's content, while its message lives.
    pub fn attachment(&self, room: &RoomId, hash: &BlobHash) -> Result<Option<Vec<u8>>> {
        self.check_room(room)?;
        match self.read_blob(None, room, hash)? {
            Some(b) if self.is_encrypted(room)? => self.open_attachment(room, &b),
            Some(b) => Ok(Some(blob::content(&b).map_err(|e| corrupt(Tree::Blobs, e))?.to_vec())),
            None => Ok(None),
        }
    }

    /// Builds a message from its row, reading the body from a transaction's
    /// staged writes first (while it announces its diffs) and then the store.
    pub(super) fn message(
        &self,
        tx: Option<&Tx>,
        room: &RoomId,
        key: SortKey,
        row: &Row,
    ) -> Result<Message> {
        let tk = tables::timeline_key(room, &key);
        let body = match self.staged_get(tx.map(|t| &t.batch), Tree::Bodies, &tk)? {
            Some(value) => Some(self.open_body(tx, room, key.hlc, &tk, &value)?),
            None => None,
        };
        Ok(message_from(key, row, body))
    }

    /// Each author's read marker: the furthest message they marked read.
    pub fn read_markers(&self, room: &RoomId) -> Result<BTreeMap<AuthorId, Cursor>> {
        self.check_room(room)?;
        let mut out: BTreeMap<AuthorId, Cursor> = BTreeMap::new();
        for (k, v) in self.room_records(Tree::Reads, room)? {
            let author =
                k.get(32..64).and_then(|a| <[u8; 32]>::try_from(a).ok()).map(AuthorId::from_bytes);
            let author = author.ok_or_else(|| corrupt(Tree::Reads, "short key"))?;
            let key = Cursor(SortKey::from_bytes(&v).map_err(|e| corrupt(Tree::Reads, e))?);
            let entry = out.entry(author).or_insert(key);
            if key > *entry {
                *entry = key;
            }
        }
        Ok(out)
    }

    /// Messages by others after our read marker.
    pub fn unread_count(&self, room: &RoomId) -> Result<u64> {
        let me = self.key.author();
        let marker = self.read_markers(room)?.get(&me).copied();
        let prefix = room.as_bytes().to_vec();
        let mut range = KeyRange::prefix(&prefix);
        if let Some(m) = marker {
            range.start = std::ops::Bound::Excluded([prefix.as_slice(), &m.0.to_bytes()].concat());
        }
        let rows = self.store.scan(Tree::Timeline, &range, Order::Ascending, usize::MAX)?;
        Ok(rows.iter().filter(|(k, _)| k.get(40..72) != Some(me.as_bytes().as_slice())).count()
            as u64)
    }

    /// Every tombstone in the room, in timeline order.
    pub fn tombstones(&self, room: &RoomId) -> Result<Vec<Tombstone>> {
        self.check_room(room)?;
        let mut out = Vec::new();
        for (k, v) in self.room_records(Tree::Tombstones, room)? {
            out.push(decode_tombstone(&k, &v)?);
        }
        out.sort();
        Ok(out)
    }

    /// The whole rendered room, for comparing replicas.
    pub fn snapshot(&self, room: &RoomId) -> Result<RoomSnapshot> {
        let mut messages = Vec::new();
        let mut anchor = Anchor::Latest;
        loop {
            let page = self.page(room, anchor, MAX_PAGE)?;
            let Some(last) = page.messages.last() else { break };
            anchor = Anchor::Before(last.cursor);
            let more = page.has_more;
            messages.extend(page.messages);
            if !more {
                break;
            }
        }
        messages.reverse();
        Ok(RoomSnapshot {
            messages,
            tombstones: self.tombstones(room)?,
            read_markers: self.read_markers(room)?,
        })
    }

    /// Every envelope this replica holds for a room, applied and pending, with
    /// the blobs it still holds, for handing to a peer. Blobs of deleted and
    /// edited-away content are gone and so never included.
    pub fn deliveries(&self, room: &RoomId) -> Result<Vec<Delivery>> {
        self.check_room(room)?;
        let mut out = Vec::new();
        for (_, v) in self.room_records(Tree::Envelopes, room)? {
            let envelope =
                Envelope::from_stored_bytes(&v).map_err(|e| corrupt(Tree::Envelopes, e))?;
            let blobs = self.blobs(room, envelope.blob_hashes())?;
            out.push(Delivery { envelope, blobs });
        }
        for (k, v) in self.room_records(Tree::Pending, room)? {
            let bytes = self.open_pending(None, room, &k, &v)?;
            out.push(Delivery::from_bytes(&bytes).map_err(|e| corrupt(Tree::Pending, e))?);
        }
        Ok(out)
    }
}
