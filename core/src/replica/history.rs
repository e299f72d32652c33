//! What catch-up sync and windowed history ask of a replica: per-bucket
//! digests and versions, the envelopes a peer lacks, blobs by hash, and the
//! window of recent buckets a replica keeps.
//!
//! Every answer is read from the store's indexes (`docs-1`, `envelopes-1`,
//! `wanted-blobs-1`), never by rendering, so its cost follows the number of
//! author documents and the size of the answer, not the size of the room.

use std::collections::{BTreeMap, BTreeSet};

use super::{corrupt, lock, Applied, Replica, Tx};
use crate::blob;
use crate::envelope::{Delivery, Envelope};
use crate::error::{EnvelopeError, Result};
use crate::ids::{AuthorId, BlobHash, RoomId, SortKey};
use crate::store::tables::{self, key_bucket};
use crate::store::{KeyRange, Order, Store, Tree, WriteBatch};
use crate::sync::{BucketDigest, BucketVersions, DIGEST_LEN, MAX_WANTED_BLOBS};
use crate::view::{bucket_bounds, Row};

/// Keys of `tree` (laid out `room ‖ bucket ‖ …`) for buckets in `[from, to)`.
fn bucket_range(room: &RoomId, from: u32, to: u32) -> KeyRange {
    KeyRange::between(&tables::bucket_prefix(room, from), &tables::bucket_prefix(room, to))
}

impl<S: Store> Replica<S> {
    // ----- windows ------------------------------------------------------------

    /// The oldest bucket this replica keeps of a room, or `None` if it keeps
    /// all of its history.
    pub fn window(&self, room: &RoomId) -> Option<u32> {
        self.windows.get(room).copied().filter(|b| *b > 0)
    }

    /// The window as a transaction sees it (0: everything is kept).
    pub(super) fn window_in(&self, tx: &Tx, room: &RoomId) -> u32 {
        tx.windows.get(room).or(self.windows.get(room)).copied().unwrap_or(0)
    }

    /// Records that a page reached the window, and says whether older
    /// history exists beyond it.
    pub(super) fn want_history(&self, room: &RoomId) -> bool {
        match self.window(room) {
            Some(oldest) => {
                lock(&self.history_wanted).insert(*room, oldest);
                true
            }
            None => false,
        }
    }

    /// Rooms whose pages reached the window since their history was last
    /// fetched, with the oldest bucket held: sync asks a peer for what lies
    /// before it ([`crate::SyncSession::fetch_history`]).
    pub fn history_wanted(&self) -> Vec<(RoomId, u32)> {
        lock(&self.history_wanted).iter().map(|(r, b)| (*r, *b)).collect()
    }

    /// Keeps only buckets from `oldest` on: older envelopes, rows, blobs,
    /// tombstones and read markers leave the store, and later envelopes for
    /// those buckets are not stored ([`Applied::OutsideWindow`]). Paging back
    /// past the window asks peers for the history again. Listeners are not
    /// told: the messages still exist, this replica just stops keeping them.
    ///
    /// Only evict history that peers or a relay hold: envelopes of this
    /// device that reached nobody are gone with it.
    pub fn evict_before(&mut self, room: &RoomId, oldest: u32) -> Result<()> {
        self.check_room(room)?;
        if self.windows.get(room).is_some_and(|w| *w >= oldest) {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        let range = bucket_range(room, 0, oldest);
        for tree in
            [Tree::Docs, Tree::Envelopes, Tree::Pending, Tree::Tombstones, Tree::WantedBlobs]
        {
            for (k, _) in self.store.scan(tree, &range, Order::Ascending, usize::MAX)? {
                batch.delete(tree, k);
            }
        }
        let (lo, _) = bucket_bounds(oldest);
        let end = [room.as_bytes().as_slice(), &lo.as_u64().to_be_bytes()].concat();
        let rows = self.store.scan(
            Tree::Timeline,
            &KeyRange::between(room.as_bytes(), &end),
            Order::Ascending,
            usize::MAX,
        )?;
        let mut evicted = BTreeSet::new();
        for (k, v) in rows {
            let key = SortKey::from_bytes(&k[32..]).map_err(|e| corrupt(Tree::Timeline, e))?;
            let row = Row::decode(&v).map_err(|e| corrupt(Tree::Timeline, e))?;
            for hash in row.blobs() {
                batch.delete(Tree::Blobs, tables::blob_key(room, hash));
            }
            evicted.insert(crate::view::bucket_of(key.hlc));
            batch.delete(Tree::MessageIds, tables::message_id_key(room, &key.id));
            batch.delete(Tree::Bodies, k.clone());
            batch.delete(Tree::Timeline, k);
        }
        for (k, _) in self.room_records(Tree::Reads, room)? {
            let bucket = k.get(64..68).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
            if bucket.is_some_and(|b| b < oldest) {
                batch.delete(Tree::Reads, k);
            }
        }
        // Messages of evicted buckets wait for no key any more.
        for (k, v) in self.room_records(Tree::KeyWaits, room)? {
            let bucket = k.get(64..68).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
            if bucket.is_some_and(|b| b < oldest) || v.is_empty() {
                batch.delete(Tree::KeyWaits, k);
            }
        }
        // The evicted buckets' keys go, and the next shred makes their
        // sealed content on disk unreadable.
        for (k, _) in self.store.scan(Tree::BucketKeys, &range, Order::Ascending, usize::MAX)? {
            if let Some(bucket) = tables::key_bucket(&k) {
                evicted.insert(bucket);
            }
        }
        for bucket in evicted {
            self.erase_bucket_keys(&mut batch, room, bucket)?;
        }
        batch.put(Tree::Windows, room.as_bytes().to_vec(), oldest.to_be_bytes());
        // Pending records of evicted buckets go too: count the room again.
        self.pending_use.remove(room);
        self.store.commit(batch)?;
        self.windows.insert(*room, oldest);
        self.docs.retain(|(r, b, _), _| r != room || *b >= oldest);
        self.doc_use.retain(|(r, b, _), _| r != room || *b >= oldest);
        Ok(())
    }

    /// Applies history a peer sent for buckets `[from, window)`: the window
    /// moves down to `from` in the same transaction, then the deliveries
    /// apply as any others. `exhausted` says the peer holds nothing older,
    /// so the window opens fully.
    pub fn apply_history(
        &mut self,
        room: &RoomId,
        from: u32,
        exhausted: bool,
        deliveries: Vec<Delivery>,
    ) -> Result<Vec<std::result::Result<Applied, EnvelopeError>>> {
        self.check_room(room)?;
        let held = self.windows.get(room).copied().unwrap_or(0);
        let lowered = if exhausted { 0 } else { from.min(held) };
        let mut tx = Tx::default();
        if lowered < held {
            tx.windows.insert(*room, lowered);
        }
        let results = self.apply_in(&mut tx, room, deliveries)?;
        self.finish(tx)?;
        lock(&self.history_wanted).remove(room);
        Ok(results)
    }

    // ----- catch-up -----------------------------------------------------------

    /// The digest of every bucket this replica holds of a room, oldest first:
    /// a hash of each author document's progress, and whether the bucket
    /// lacks blobs its live messages reference.
    pub fn bucket_digests(&self, room: &RoomId) -> Result<Vec<BucketDigest>> {
        self.check_room(room)?;
        let mut versions: BTreeMap<u32, Vec<(AuthorId, u32)>> = BTreeMap::new();
        for (k, v) in self.room_records(Tree::Docs, room)? {
            let (bucket, author, clock) = decode_doc_entry(&k, &v)?;
            versions.entry(bucket).or_default().push((author, clock));
        }
        let mut wanting = BTreeSet::new();
        let mut range = KeyRange::prefix(room.as_bytes());
        // One probe per bucket that wants blobs: skip past each bucket found.
        while let Some((k, _)) =
            self.store.scan(Tree::WantedBlobs, &range, Order::Ascending, 1)?.pop()
        {
            let bucket = key_bucket(&k).ok_or_else(|| corrupt(Tree::WantedBlobs, "short key"))?;
            wanting.insert(bucket);
            match bucket.checked_add(1) {
                Some(next) => {
                    range.start = std::ops::Bound::Included(tables::bucket_prefix(room, next))
                }
                None => break,
            }
        }
        Ok(versions
            .into_iter()
            .map(|(bucket, authors)| BucketDigest {
                bucket,
                digest: digest_of(&authors),
                wants_blobs: wanting.contains(&bucket),
            })
            .collect())
    }

    /// How far this replica holds each author document of a bucket, and the
    /// blobs it lacks there (at most [`MAX_WANTED_BLOBS`]).
    pub fn bucket_versions(&self, room: &RoomId, bucket: u32) -> Result<BucketVersions> {
        self.check_room(room)?;
        let prefix = tables::bucket_prefix(room, bucket);
        let mut authors = Vec::new();
        for (k, v) in
            self.store.scan(Tree::Docs, &KeyRange::prefix(&prefix), Order::Ascending, usize::MAX)?
        {
            let (_, author, clock) = decode_doc_entry(&k, &v)?;
            authors.push((author, clock));
        }
        let mut wanted_blobs = Vec::new();
        for (k, _) in self.store.scan(
            Tree::WantedBlobs,
            &KeyRange::prefix(&prefix),
            Order::Ascending,
            MAX_WANTED_BLOBS,
        )? {
            let hash: [u8; 32] = k
                .get(36..68)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| corrupt(Tree::WantedBlobs, "short key"))?;
            wanted_blobs.push(BlobHash(hash));
        }
        Ok(BucketVersions { bucket, authors, wanted_blobs })
    }

    /// The envelopes of a bucket that a peer at `theirs` lacks, in each
    /// author's clock order, with the blobs this replica still holds for
    /// them (erased content is gone, so it is never sent).
    pub fn deliveries_since(
        &self,
        room: &RoomId,
        theirs: &BucketVersions,
    ) -> Result<Vec<Delivery>> {
        self.check_room(room)?;
        let bucket = theirs.bucket;
        let known: BTreeMap<AuthorId, u32> = theirs.authors.iter().copied().collect();
        let mut out = Vec::new();
        let prefix = tables::bucket_prefix(room, bucket);
        for (k, v) in
            self.store.scan(Tree::Docs, &KeyRange::prefix(&prefix), Order::Ascending, usize::MAX)?
        {
            let (_, author, ours) = decode_doc_entry(&k, &v)?;
            let from = known.get(&author).copied().unwrap_or(0);
            if from >= ours {
                continue;
            }
            let start = tables::envelope_key(room, bucket, &author, from);
            let mut range = KeyRange::prefix(&tables::doc_key(room, bucket, &author));
            range.start = std::ops::Bound::Included(start);
            for (_, raw) in
                self.store.scan(Tree::Envelopes, &range, Order::Ascending, usize::MAX)?
            {
                let envelope =
                    Envelope::from_stored_bytes(&raw).map_err(|e| corrupt(Tree::Envelopes, e))?;
                let blobs = self.blobs(room, envelope.blob_hashes())?;
                out.push(Delivery { envelope, blobs });
            }
        }
        Ok(out)
    }

    /// The blobs among `hashes` that this replica holds.
    pub fn blobs<'a>(
        &self,
        room: &RoomId,
        hashes: impl IntoIterator<Item = &'a BlobHash>,
    ) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for hash in hashes {
            if let Some(b) = self.read_blob(None, room, hash)? {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// Offers blobs for messages of a bucket (fetched by sync): each is kept
    /// only if a live message there wants it, and that message's timeline
    /// row is announced as updated.
    pub fn offer_blobs(&mut self, room: &RoomId, bucket: u32, blobs: Vec<Vec<u8>>) -> Result<()> {
        self.check_room(room)?;
        let blobs: Vec<Vec<u8>> = blobs.into_iter().filter(|b| blob::content(b).is_ok()).collect();
        let mut tx = Tx::default();
        tx.offer(*room, bucket, blobs);
        self.finish(tx)
    }

    /// Buckets below `before` that this replica holds, newest first, until
    /// they hold at least `min_envelopes` envelopes (whole buckets only), and
    /// whether nothing older remains.
    pub fn buckets_before(
        &self,
        room: &RoomId,
        before: u32,
        min_envelopes: usize,
    ) -> Result<(Vec<u32>, bool)> {
        self.check_room(room)?;
        let mut out = Vec::new();
        let mut count = 0usize;
        let mut end = before;
        loop {
            let range = bucket_range(room, 0, end);
            let Some((k, _)) = self.store.scan(Tree::Docs, &range, Order::Descending, 1)?.pop()
            else {
                return Ok((out, true));
            };
            let bucket = key_bucket(&k).ok_or_else(|| corrupt(Tree::Docs, "short key"))?;
            out.push(bucket);
            count += self
                .store
                .scan(
                    Tree::Envelopes,
                    &KeyRange::prefix(&tables::bucket_prefix(room, bucket)),
                    Order::Ascending,
                    usize::MAX,
                )?
                .len();
            if count >= min_envelopes {
                let older = self.store.scan(
                    Tree::Docs,
                    &bucket_range(room, 0, bucket),
                    Order::Descending,
                    1,
                )?;
                return Ok((out, older.is_empty()));
            }
            end = bucket;
        }
    }
}

/// Splits a `docs-1` entry into bucket, author and next clock.
fn decode_doc_entry(key: &[u8], value: &[u8]) -> Result<(u32, AuthorId, u32)> {
    let bucket = key_bucket(key).ok_or_else(|| corrupt(Tree::Docs, "short key"))?;
    let author = tables::doc_key_author(key).ok_or_else(|| corrupt(Tree::Docs, "short key"))?;
    let clock: [u8; 4] = value.try_into().map_err(|_| corrupt(Tree::Docs, "clock length"))?;
    Ok((bucket, author, u32::from_be_bytes(clock)))
}

/// A bucket's digest: blake3 over its author documents' progress, in author
/// order, truncated. Two replicas holding the same envelopes of a bucket
/// have the same digest; honest histories differ in some author's clock.
pub(crate) fn digest_of(authors: &[(AuthorId, u32)]) -> [u8; DIGEST_LEN] {
    let mut h = blake3::Hasher::new_derive_key("concord 2026 bucket digest v1");
    for (author, clock) in authors {
        h.update(author.as_bytes());
        h.update(&clock.to_be_bytes());
    }
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..DIGEST_LEN]);
    out
}
