//! One transaction's staged state ([`Tx`]) and its commit.
//!
//! An operation changes in-memory author documents and stages every write in
//! one [`WriteBatch`]; [`Replica::finish`] renders each touched bucket once,
//! stages the rows and erasures that follow, commits the batch (atomic and
//! flushed) and only then tells listeners. If the commit fails, the touched
//! documents are dropped from memory and reload from the store, so memory
//! never runs ahead of what is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::e2ee::Announcement;
use super::pending::PendingUse;
use super::Replica;
use crate::blob;
use crate::doc::{Changes, DocChange};
use crate::envelope::{Delivery, Envelope};
use crate::error::Result;
use crate::ids::{AuthorId, BlobHash, MessageId, RoomId, SortKey};
use crate::store::tables;
use crate::store::tables::META_HLC;
use crate::store::{Store, Tree, WriteBatch};
use crate::view::TimelineDiff;

pub(super) type DocKey = (RoomId, u32, AuthorId);

/// What a transaction must re-render in one bucket.
#[derive(Default, Debug)]
pub(super) struct Affected {
    /// Messages whose post, tombstones or reactions changed.
    pub(super) ids: BTreeSet<MessageId>,
    /// Authors whose read marker changed.
    pub(super) reads: BTreeSet<AuthorId>,
    /// Room-key entries written, per document author.
    pub(super) shares: BTreeMap<AuthorId, BTreeSet<String>>,
    /// Room-key requests written, per document author.
    pub(super) requests: BTreeMap<AuthorId, BTreeSet<String>>,
}

/// One transaction's staged state.
#[derive(Default)]
pub(super) struct Tx {
    pub(super) batch: WriteBatch,
    /// What to re-render, per (room, bucket).
    pub(super) affected: BTreeMap<(RoomId, u32), Affected>,
    /// Documents changed in memory (dropped from the cache if the commit fails).
    pub(super) docs: HashSet<DocKey>,
    /// Documents created in this transaction (not yet listed in `docs-1`).
    pub(super) new_docs: BTreeSet<DocKey>,
    /// Documents this transaction loaded or used: the cache keeps them.
    pub(super) used: HashSet<DocKey>,
    /// Blobs offered by local posts, remote deliveries or sync, per (room,
    /// bucket), kept only if a live message there references them.
    pub(super) blobs: BTreeMap<(RoomId, u32), HashMap<BlobHash, Vec<u8>>>,
    /// Windows lowered by this transaction (history fetched from a peer).
    pub(super) windows: HashMap<RoomId, u32>,
    /// Messages posted, and deleted, earlier in this transaction.
    pub(super) posted: HashMap<(RoomId, MessageId), SortKey>,
    pub(super) deleted: HashSet<(RoomId, MessageId)>,
    /// Pending deliveries staged in this transaction, by `pending-1` key.
    pub(super) pending: BTreeMap<Vec<u8>, Delivery>,
    /// How this transaction changes each room's pending use, per author.
    pub(super) pending_delta: HashMap<(RoomId, AuthorId), PendingUse>,
    /// Timeline diffs to announce after the commit.
    pub(super) diffs: BTreeMap<RoomId, Vec<TimelineDiff>>,
    /// Bucket keys made in this transaction (they join the cache once it
    /// commits).
    pub(super) bucket_keys: HashMap<(RoomId, u32), [u8; 32]>,
    /// Content keys of blobs staged in this transaction.
    pub(super) content_keys: HashMap<(RoomId, BlobHash), [u8; 32]>,
    /// Changes queued for this device's own document of a bucket (room
    /// keys, key requests), written with the next own change there or on
    /// their own before the commit.
    pub(super) own_changes: BTreeMap<(RoomId, u32), Vec<DocChange>>,
    /// Outbound sessions this transaction encrypted with or made.
    pub(super) outbound: BTreeSet<(RoomId, u32)>,
    /// Own changes made in answer to peers, announced once committed.
    pub(super) announce: Vec<Announcement>,
    /// Messages whose content became decryptable: rendered again even if
    /// their row did not change.
    pub(super) unlocked: BTreeSet<(RoomId, MessageId)>,
    /// Messages found waiting for a room key while rendering.
    pub(super) waits: Vec<super::render::Wait>,
    /// Bodies this device encrypted in this transaction, by blob hash: its
    /// own posts and edits render from the text it wrote, not by
    /// decrypting its own ciphertext again.
    pub(super) own_bodies: HashMap<BlobHash, Vec<u8>>,
}

impl Tx {
    pub(super) fn affect(&mut self, dk: DocKey, changes: Changes) {
        if changes.ids.is_empty()
            && !changes.read
            && changes.shares.is_empty()
            && changes.requests.is_empty()
        {
            return;
        }
        let entry = self.affected.entry((dk.0, dk.1)).or_default();
        entry.ids.extend(changes.ids);
        if changes.read {
            entry.reads.insert(dk.2);
        }
        if !changes.shares.is_empty() {
            entry.shares.entry(dk.2).or_default().extend(changes.shares);
        }
        if !changes.requests.is_empty() {
            entry.requests.entry(dk.2).or_default().extend(changes.requests);
        }
    }

    pub(super) fn offer(&mut self, room: RoomId, bucket: u32, blobs: Vec<Vec<u8>>) {
        if blobs.is_empty() {
            return;
        }
        let offered = self.blobs.entry((room, bucket)).or_default();
        for b in blobs {
            offered.insert(blob::hash(&b), b);
        }
    }
}

pub(super) fn stage_envelope(tx: &mut Tx, env: &Envelope) {
    let (start, _) = env.clock_range();
    let key = tables::envelope_key(&env.room(), env.bucket(), &env.author(), start);
    tx.batch.put(Tree::Envelopes, key, env.as_bytes().to_vec());
}

impl<S: Store> Replica<S> {
    /// Renders every affected message and read marker, stages the resulting
    /// rows, blob keeps and erasures, commits, and announces the diffs.
    pub(super) fn finish(&mut self, mut tx: Tx) -> Result<()> {
        let mut buckets: BTreeSet<(RoomId, u32)> = tx.affected.keys().copied().collect();
        buckets.extend(tx.blobs.keys().copied());
        for (room, bucket) in buckets {
            if let Err(e) = self.refresh_bucket(&mut tx, &room, bucket) {
                self.abandon(&tx);
                return Err(e);
            }
        }
        // Room keys and requests made in answer to peers, then the sessions
        // this transaction advanced.
        if let Err(e) = self.write_queued_changes(&mut tx) {
            self.abandon(&tx);
            return Err(e);
        }
        self.stage_outbound(&mut tx);
        for dk in &tx.docs {
            if let Some(doc) = self.docs.get(dk) {
                let next = doc.next_clock();
                tx.batch.put(Tree::Docs, tables::doc_key(&dk.0, dk.1, &dk.2), next.to_be_bytes());
                if let Some(used) = self.doc_use.get_mut(dk) {
                    used.items = u64::from(next);
                }
            }
        }
        for (room, bucket) in &tx.windows {
            tx.batch.put(Tree::Windows, room.as_bytes().to_vec(), bucket.to_be_bytes());
        }
        tx.batch.put(Tree::Meta, META_HLC, self.hlc.last().as_u64().to_be_bytes());
        let batch = std::mem::take(&mut tx.batch);
        if let Err(e) = self.store.commit(batch) {
            self.abandon(&tx);
            return Err(e.into());
        }
        self.keep_bucket_keys(&mut tx);
        self.keep_announcements(&mut tx);
        for (room, bucket) in std::mem::take(&mut tx.windows) {
            self.windows.insert(room, bucket);
        }
        for ((room, author), delta) in std::mem::take(&mut tx.pending_delta) {
            if let Some(used) = self.pending_use.get_mut(&room) {
                used.add(author, delta);
            }
        }
        self.trim_doc_cache(&tx.used);
        self.announce(std::mem::take(&mut tx.diffs));
        Ok(())
    }

    pub(super) fn abandon(&mut self, tx: &Tx) {
        self.drop_outbound(tx);
        for dk in tx.docs.iter().chain(&tx.new_docs) {
            self.docs.remove(dk);
            self.doc_use.remove(dk);
        }
    }

    /// The value at `key` as it will be once `staged` (if any) commits.
    pub(super) fn staged_get(
        &self,
        staged: Option<&WriteBatch>,
        tree: Tree,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        match staged.and_then(|b| b.get(tree, key)) {
            Some(value) => Ok(value.map(<[u8]>::to_vec)),
            None => Ok(self.store.get(tree, key)?),
        }
    }
}
