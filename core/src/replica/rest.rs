//! Content at rest, and crypto-shredding.
//!
//! sled is log-structured: a value removed or overwritten stays in old
//! segments until sled reuses them, so deleting a record does not take its
//! bytes off the disk. Content therefore never reaches the trees in the
//! clear. Each stored blob (a body or an attachment, as it travels) is
//! sealed under its own random content key; body text is sealed under the
//! content key of its body blob. Content keys are sealed under their
//! bucket's key, and bucket keys under the key-encryption key (KEK), which
//! lives in the store's secret slots outside the trees, overwritten in place
//! (layouts: `crypto/rest.rs`, `store/tables.rs`).
//!
//! Erasing a blob deletes its sealed copy and its content key and marks the
//! bucket in `shred-1`. [`Replica::shred`] then gives every marked bucket a
//! new bucket key (re-sealing its live content keys, not its content),
//! writes a new KEK into the free secret slot, re-seals every bucket key
//! under it, commits, and clears the old KEK's slot. From then on the old
//! sealed copies of an erased blob, its key and its bucket key that linger
//! in sled's segments open under no key that exists anywhere. The cost is
//! one small record per live content key in the marked buckets and one per
//! bucket of the store.
//!
//! A crash anywhere in a shred loses nothing: `meta-1` names the slot the
//! committed bucket keys are sealed under, and opening clears the other
//! slot (an interrupted rotation's new key, or an old key not yet cleared).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use super::tx::Tx;
use super::{corrupt, Replica};
use crate::crypto::rest::{self as sealing, BODY_TEXT, BODY_WAITING};
use crate::error::Result;
use crate::ids::{BlobHash, Hlc, RoomId, SortKey};
use crate::store::tables::{self, META_KEK_SEQ};
use crate::store::{KeyRange, Order, SecretSlot, Store, Tree, WriteBatch};
use crate::view::{bucket_bounds, bucket_of};

/// The key hierarchy's state in memory: the active key-encryption key and
/// the bucket keys opened so far.
pub(super) struct RestKeys {
    kek: SecretSlot,
    /// The secret slot (0 or 1) holding `kek`.
    slot: usize,
    buckets: Mutex<HashMap<(RoomId, u32), [u8; 32]>>,
}

impl RestKeys {
    pub(super) fn open<S: Store>(store: &S) -> Result<Self> {
        let (slot, kek) = sealing::open_kek(store)?;
        Ok(Self { kek, slot, buckets: Mutex::new(HashMap::new()) })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(RoomId, u32), [u8; 32]>> {
        // Entries are whole keys: a panic elsewhere leaves the map usable.
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The timeline keys of one bucket of a room.
fn bucket_timeline(room: &RoomId, bucket: u32) -> KeyRange {
    let (lo, hi) = bucket_bounds(bucket);
    let at = |h: Hlc| [room.as_bytes().as_slice(), &h.as_u64().to_be_bytes()].concat();
    KeyRange::between(&at(lo), &at(hi))
}

/// What a stored body holds.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum StoredBody {
    /// The text.
    Text(Vec<u8>),
    /// Nothing yet: the body waits for its room key.
    Waiting,
}

fn room_of(key: &[u8]) -> Option<RoomId> {
    key.get(..32).and_then(|r| <[u8; 32]>::try_from(r).ok()).map(RoomId::from_bytes)
}

impl<S: Store> Replica<S> {
    /// The key of a bucket that has one, seeing keys this transaction made.
    pub(super) fn bucket_key(
        &self,
        tx: Option<&Tx>,
        room: &RoomId,
        bucket: u32,
    ) -> Result<Option<[u8; 32]>> {
        if let Some(key) = tx.and_then(|t| t.bucket_keys.get(&(*room, bucket))) {
            return Ok(Some(*key));
        }
        if let Some(key) = self.rest.cache().get(&(*room, bucket)) {
            return Ok(Some(*key));
        }
        let k = tables::bucket_prefix(room, bucket);
        let Some(v) = self.store.get(Tree::BucketKeys, &k)? else { return Ok(None) };
        let key = sealing::open_bucket_key_value(&k, &v, &self.rest.kek)?;
        self.rest.cache().insert((*room, bucket), key);
        Ok(Some(key))
    }

    /// The bucket's key, made (and staged) if it has none yet.
    fn ensure_bucket_key(&self, tx: &mut Tx, room: &RoomId, bucket: u32) -> Result<[u8; 32]> {
        if let Some(key) = self.bucket_key(Some(tx), room, bucket)? {
            return Ok(key);
        }
        let key = sealing::random_key()?;
        let k = tables::bucket_prefix(room, bucket);
        tx.batch.put(
            Tree::BucketKeys,
            k.clone(),
            sealing::bucket_key_value(&k, &key, &self.rest.kek)?,
        );
        tx.bucket_keys.insert((*room, bucket), key);
        Ok(key)
    }

    /// Stages a blob of a live message in `bucket`, sealed under a new
    /// content key. An outbox mirrors it as it travels.
    pub(super) fn stage_blob(
        &self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
        hash: &BlobHash,
        blob: &[u8],
    ) -> Result<()> {
        let bucket_key = self.ensure_bucket_key(tx, room, bucket)?;
        let content_key = sealing::random_key()?;
        let ck = tables::content_key_key(room, bucket, hash);
        tx.batch.put(
            Tree::ContentKeys,
            ck.clone(),
            sealing::content_key_value(&ck, &bucket_key, &content_key)?,
        );
        let bk = tables::blob_key(room, hash);
        let value = sealing::blob_value(&bk, bucket, &content_key, blob)?;
        tx.batch.put_sealed(Tree::Blobs, bk, value, blob.to_vec());
        tx.content_keys.insert((*room, *hash), content_key);
        Ok(())
    }

    /// The content key of a stored blob, seeing this transaction's writes.
    fn content_key(
        &self,
        tx: Option<&Tx>,
        room: &RoomId,
        bucket: u32,
        hash: &BlobHash,
    ) -> Result<Option<[u8; 32]>> {
        if let Some(key) = tx.and_then(|t| t.content_keys.get(&(*room, *hash))) {
            return Ok(Some(*key));
        }
        let ck = tables::content_key_key(room, bucket, hash);
        let Some(sealed) = self.staged_get(tx.map(|t| &t.batch), Tree::ContentKeys, &ck)? else {
            return Ok(None);
        };
        let Some(bucket_key) = self.bucket_key(tx, room, bucket)? else {
            return Err(corrupt(Tree::ContentKeys, "a content key in a bucket without a key"));
        };
        Ok(Some(sealing::open_content_key_value(&ck, &bucket_key, &sealed)?))
    }

    /// A stored blob as it travels, seeing this transaction's writes.
    pub(super) fn read_blob(
        &self,
        tx: Option<&Tx>,
        room: &RoomId,
        hash: &BlobHash,
    ) -> Result<Option<Vec<u8>>> {
        let bk = tables::blob_key(room, hash);
        if let Some(plain) = tx.and_then(|t| t.batch.plain(Tree::Blobs, &bk)) {
            return Ok(Some(plain.to_vec()));
        }
        let Some(value) = self.staged_get(tx.map(|t| &t.batch), Tree::Blobs, &bk)? else {
            return Ok(None);
        };
        let bucket = sealing::blob_value_bucket(&value)?;
        let key = self
            .content_key(tx, room, bucket, hash)?
            .ok_or_else(|| corrupt(Tree::Blobs, "a blob without its content key"))?;
        Ok(Some(sealing::open_blob_value(&bk, &key, &value)?))
    }

    /// Stages the body text of the live message at `key`, sealed under the
    /// content key of its body blob `body` (stored in the same bucket).
    pub(super) fn stage_body(
        &self,
        tx: &mut Tx,
        room: &RoomId,
        key: &SortKey,
        body: &BlobHash,
        text: &[u8],
    ) -> Result<()> {
        let bucket = bucket_of(key.hlc);
        let bucket_key = self.ensure_bucket_key(tx, room, bucket)?;
        let content_key = self
            .content_key(Some(tx), room, bucket, body)?
            .ok_or_else(|| corrupt(Tree::Bodies, "a body whose blob has no content key"))?;
        let tk = tables::timeline_key(room, key);
        let value = sealing::body_value(&tk, &bucket_key, &content_key, text)?;
        tx.batch.put(Tree::Bodies, tk, value);
        Ok(())
    }

    /// Marks the body of the live message at `key` as waiting for its
    /// room key.
    pub(super) fn stage_waiting_body(&self, tx: &mut Tx, room: &RoomId, key: &SortKey) {
        tx.batch.put(Tree::Bodies, tables::timeline_key(room, key), vec![BODY_WAITING]);
    }

    /// What a `bodies-2` value stored at `tk` (room ‖ sortkey) holds.
    pub(super) fn open_body(
        &self,
        tx: Option<&Tx>,
        room: &RoomId,
        hlc: Hlc,
        tk: &[u8],
        value: &[u8],
    ) -> Result<StoredBody> {
        if value == [BODY_WAITING] {
            return Ok(StoredBody::Waiting);
        }
        let bucket_key = self
            .bucket_key(tx, room, bucket_of(hlc))?
            .ok_or_else(|| corrupt(Tree::Bodies, "a body in a bucket without a key"))?;
        Ok(StoredBody::Text(sealing::open_body_value(tk, &bucket_key, value)?))
    }

    /// Stages a delivery that waits in `pending-2` at `key` (of `bucket`),
    /// sealed under the bucket key. An outbox mirrors its envelope.
    pub(super) fn stage_pending(
        &self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
        key: Vec<u8>,
        delivery: Vec<u8>,
    ) -> Result<()> {
        let bucket_key = self.ensure_bucket_key(tx, room, bucket)?;
        let value = sealing::pending_value(&key, &bucket_key, &delivery)?;
        tx.batch.put_sealed(Tree::Pending, key, value, delivery);
        Ok(())
    }

    /// The delivery bytes of a `pending-2` value stored at `key`.
    pub(super) fn open_pending(
        &self,
        tx: Option<&Tx>,
        room: &RoomId,
        key: &[u8],
        value: &[u8],
    ) -> Result<Vec<u8>> {
        let bucket = tables::key_bucket(key).ok_or_else(|| corrupt(Tree::Pending, "short key"))?;
        let bucket_key = self
            .bucket_key(tx, room, bucket)?
            .ok_or_else(|| corrupt(Tree::Pending, "a delivery in a bucket without a key"))?;
        sealing::open_pending_value(key, &bucket_key, value)
    }

    /// The delivery waiting at `key`, seeing this transaction's writes.
    pub(super) fn staged_pending(
        &self,
        tx: &Tx,
        room: &RoomId,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        if let Some(plain) = tx.batch.plain(Tree::Pending, key) {
            return Ok(Some(plain.to_vec()));
        }
        match self.staged_get(Some(&tx.batch), Tree::Pending, key)? {
            Some(value) => Ok(Some(self.open_pending(Some(tx), room, key, &value)?)),
            None => Ok(None),
        }
    }

    /// Erases a stored blob of `bucket`: its sealed copy and its content
    /// key, and marks the bucket for the next [`Replica::shred`].
    pub(super) fn erase_blob(&self, tx: &mut Tx, room: &RoomId, bucket: u32, hash: &BlobHash) {
        tx.batch.delete(Tree::Blobs, tables::blob_key(room, hash));
        tx.batch.delete(Tree::ContentKeys, tables::content_key_key(room, bucket, hash));
        tx.batch.put(Tree::Shred, tables::bucket_prefix(room, bucket), Vec::new());
        tx.content_keys.remove(&(*room, *hash));
    }

    /// Erases a bucket's keys (its content left the store: an evicted
    /// bucket) and marks it for the next [`Replica::shred`].
    pub(super) fn erase_bucket_keys(
        &self,
        batch: &mut WriteBatch,
        room: &RoomId,
        bucket: u32,
    ) -> Result<()> {
        let prefix = tables::bucket_prefix(room, bucket);
        let all = KeyRange::prefix(&prefix);
        for (k, _) in self.store.scan(Tree::ContentKeys, &all, Order::Ascending, usize::MAX)? {
            batch.delete(Tree::ContentKeys, k);
        }
        batch.delete(Tree::BucketKeys, prefix.clone());
        batch.put(Tree::Shred, prefix, Vec::new());
        Ok(())
    }

    /// The content key a stored blob is sealed under, for tests that check
    /// that it is gone from the disk once the blob is erased and shredded.
    #[doc(hidden)]
    pub fn content_key_of(&self, room: &RoomId, hash: &BlobHash) -> Result<Option<[u8; 32]>> {
        let Some(value) = self.store.get(Tree::Blobs, &tables::blob_key(room, hash))? else {
            return Ok(None);
        };
        let bucket = sealing::blob_value_bucket(&value)?;
        self.content_key(None, room, bucket, hash)
    }

    /// Whether erased content awaits [`Replica::shred`].
    pub fn shred_pending(&self) -> Result<bool> {
        let all = KeyRange::prefix(&[]);
        Ok(!self.store.scan(Tree::Shred, &all, Order::Ascending, 1)?.is_empty())
    }

    /// Makes everything erased since the last shred unreadable on disk:
    /// new keys for the buckets that lost content, a new key-encryption key
    /// for all bucket keys, and the old key-encryption key overwritten in
    /// its slot. Returns how many buckets were re-keyed (0: nothing to do).
    /// The node runs it by itself when its replica is idle after erasing;
    /// it is safe to call at any time.
    pub fn shred(&mut self) -> Result<usize> {
        let all = KeyRange::prefix(&[]);
        let marked = self.store.scan(Tree::Shred, &all, Order::Ascending, usize::MAX)?;
        if marked.is_empty() {
            return Ok(0);
        }
        let mut batch = WriteBatch::new();
        let mut rekeyed: HashMap<Vec<u8>, [u8; 32]> = HashMap::new();
        let mut buckets = BTreeSet::new();
        for (prefix, _) in &marked {
            batch.delete(Tree::Shred, prefix.clone());
            let (Some(room), Some(bucket)) = (room_of(prefix), tables::key_bucket(prefix)) else {
                return Err(corrupt(Tree::Shred, "short key"));
            };
            buckets.insert((room, bucket));
            let Some(old) = self.bucket_key(None, &room, bucket)? else { continue };
            let new = sealing::random_key()?;
            // Live content keys of the bucket, re-sealed; the content stays.
            let range = KeyRange::prefix(prefix);
            for (ck, sealed) in
                self.store.scan(Tree::ContentKeys, &range, Order::Ascending, usize::MAX)?
            {
                let key = sealing::open_content_key_value(&ck, &old, &sealed)?;
                let value = sealing::content_key_value(&ck, &new, &key)?;
                batch.put(Tree::ContentKeys, ck, value);
            }
            // Deliveries waiting in the bucket, re-sealed.
            let waiting = KeyRange::prefix(prefix);
            for (pk, value) in
                self.store.scan(Tree::Pending, &waiting, Order::Ascending, usize::MAX)?
            {
                let delivery = sealing::open_pending_value(&pk, &old, &value)?;
                batch.put(Tree::Pending, pk.clone(), sealing::pending_value(&pk, &new, &delivery)?);
            }
            // The copies of content keys that bodies carry, likewise.
            let range = bucket_timeline(&room, bucket);
            for (tk, value) in
                self.store.scan(Tree::Bodies, &range, Order::Ascending, usize::MAX)?
            {
                if value.first() == Some(&BODY_TEXT) {
                    let rekeyed_body = sealing::rekey_body_value(&tk, &old, &new, &value)?;
                    batch.put(Tree::Bodies, tk, rekeyed_body);
                }
            }
            rekeyed.insert(prefix.clone(), new);
        }
        // A new key-encryption key, written first to the free slot.
        let kek = SecretSlot { seq: self.rest.kek.seq + 1, key: sealing::random_key()? };
        let free = 1 - self.rest.slot;
        self.store.write_secret_slot(free, Some(kek))?;
        for (k, v) in self.store.scan(Tree::BucketKeys, &all, Order::Ascending, usize::MAX)? {
            let key = match rekeyed.get(&k) {
                Some(new) => *new,
                None => sealing::open_bucket_key_value(&k, &v, &self.rest.kek)?,
            };
            batch.put(Tree::BucketKeys, k.clone(), sealing::bucket_key_value(&k, &key, &kek)?);
        }
        batch.put(Tree::Meta, META_KEK_SEQ, kek.seq.to_be_bytes());
        self.store.commit(batch)?;
        // Committed under the new key: the old one goes.
        self.store.write_secret_slot(self.rest.slot, None)?;
        self.rest.kek = kek;
        self.rest.slot = free;
        let mut cache = self.rest.cache();
        for key in &buckets {
            cache.remove(key);
        }
        for (prefix, key) in rekeyed {
            if let (Some(room), Some(bucket)) = (room_of(&prefix), tables::key_bucket(&prefix)) {
                cache.insert((room, bucket), key);
            }
        }
        Ok(buckets.len())
    }

    /// After a commit: keys this transaction made join the cache.
    pub(super) fn keep_bucket_keys(&self, tx: &mut Tx) {
        let mut cache = self.rest.cache();
        for (k, key) in tx.bucket_keys.drain() {
            cache.insert(k, key);
        }
    }
}
