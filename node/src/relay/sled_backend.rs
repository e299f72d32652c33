//! The embedded relay store: sled on the relay's disk, one tree per table.
//! Keys are the wide-column keys concatenated, big-endian, so byte order is
//! sort order: `room ‖ bucket ‖ hlc ‖ author ‖ envelope id` for envelopes,
//! `room ‖ bucket` for buckets, `room ‖ hash` for blobs, `room` for rooms,
//! `room ‖ head` for governance changes (value: the signed change).
//! Each write is one sled transaction, flushed before it returns; a batch of
//! envelopes ([`RelayStore::put_envelopes`]) is one transaction and one
//! flush for the whole batch.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::path::Path;

use concord_core::{BlobHash, Genesis, GovHead, RoomId};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{
    check_blob, check_gov_change_len, hashes_to, EnvelopeKey, RelayStore, RelayStoreError,
    StoreResult, StoredEnvelope, Written,
};

const ENVELOPES: &str = "relay-envelopes-1";
const BUCKETS: &str = "relay-buckets-1";
const BLOBS: &str = "relay-blobs-1";
const ROOMS: &str = "relay-rooms-1";
const GOVERNANCE: &str = "relay-governance-1";

/// The relay store on sled, the embedded default.
#[derive(Clone, Debug)]
pub struct SledRelayStore {
    db: sled::Db,
    envelopes: sled::Tree,
    buckets: sled::Tree,
    blobs: sled::Tree,
    rooms: sled::Tree,
    governance: sled::Tree,
}

fn io(e: impl std::fmt::Display) -> RelayStoreError {
    RelayStoreError::Unavailable(e.to_string())
}

fn partition(room: &RoomId, bucket: u32) -> Vec<u8> {
    [room.as_bytes().as_slice(), &bucket.to_be_bytes()].concat()
}

fn envelope_key(room: &RoomId, bucket: u32, key: &EnvelopeKey) -> Vec<u8> {
    [partition(room, bucket).as_slice(), &key.to_bytes()].concat()
}

fn blob_key(room: &RoomId, hash: &BlobHash) -> Vec<u8> {
    [room.as_bytes().as_slice(), hash.as_bytes()].concat()
}

fn governance_key(room: &RoomId, head: &GovHead) -> Vec<u8> {
    [room.as_bytes().as_slice(), head.as_slice()].concat()
}

impl SledRelayStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        let db = sled::open(dir).map_err(|e| RelayStoreError::Setup(e.to_string()))?;
        let tree =
            |name: &str| db.open_tree(name).map_err(|e| RelayStoreError::Setup(e.to_string()));
        Ok(Self {
            envelopes: tree(ENVELOPES)?,
            buckets: tree(BUCKETS)?,
            blobs: tree(BLOBS)?,
            rooms: tree(ROOMS)?,
            governance: tree(GOVERNANCE)?,
            db,
        })
    }

    async fn flush(&self) -> StoreResult<()> {
        self.db.flush_async().await.map(drop).map_err(io)
    }

    /// Inserts into `tree` if absent, flushed.
    async fn insert_new(
        &self,
        tree: &sled::Tree,
        key: Vec<u8>,
        value: &[u8],
    ) -> StoreResult<Written> {
        let swapped = tree.compare_and_swap(key, None::<&[u8]>, Some(value)).map_err(io)?;
        self.flush().await?;
        Ok(if swapped.is_ok() { Written::Inserted } else { Written::AlreadyPresent })
    }

    fn decode(room: RoomId, bucket: u32, key: &[u8], value: &[u8]) -> StoreResult<StoredEnvelope> {
        let sort =
            key.get(36..).ok_or_else(|| RelayStoreError::Corrupt("short envelope key".into()))?;
        Ok(StoredEnvelope {
            room,
            bucket,
            key: EnvelopeKey::from_bytes(sort)?,
            bytes: value.to_vec(),
        })
    }
}

impl RelayStore for SledRelayStore {
    fn backend(&self) -> &'static str {
        "sled"
    }

    async fn put_room(&self, genesis: &Genesis) -> StoreResult<Written> {
        let key = genesis.room_id().as_bytes().to_vec();
        self.insert_new(&self.rooms, key, genesis.as_bytes()).await
    }

    async fn rooms(&self) -> StoreResult<Vec<Genesis>> {
        let mut out = Vec::new();
        for item in self.rooms.iter() {
            let (_, value) = item.map_err(io)?;
            out.push(
                Genesis::from_bytes(&value)
                    .map_err(|e| RelayStoreError::Corrupt(format!("room genesis: {e}")))?,
            );
        }
        Ok(out)
    }

    async fn put_envelope(&self, envelope: &StoredEnvelope) -> StoreResult<Written> {
        let key = envelope_key(&envelope.room, envelope.bucket, &envelope.key);
        let bucket = partition(&envelope.room, envelope.bucket);
        // The envelope and its bucket's index entry in one transaction, so a
        // crash never leaves an envelope its bucket listing misses.
        let result = (&self.envelopes, &self.buckets).transaction(|(envelopes, buckets)| {
            if envelopes.get(&key)?.is_some() {
                return Ok(Written::AlreadyPresent);
            }
            envelopes.insert(key.as_slice(), envelope.bytes.as_slice())?;
            buckets.insert(bucket.as_slice(), &[][..])?;
            Ok::<_, ConflictableTransactionError<()>>(Written::Inserted)
        });
        let written = result.map_err(|e: TransactionError<()>| io(format!("{e:?}")))?;
        self.flush().await?;
        Ok(written)
    }

    async fn put_envelopes(&self, batch: &[StoredEnvelope]) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows: Vec<(Vec<u8>, &[u8])> = batch
            .iter()
            .map(|e| (envelope_key(&e.room, e.bucket, &e.key), e.bytes.as_slice()))
            .collect();
        let buckets: BTreeSet<Vec<u8>> =
            batch.iter().map(|e| partition(&e.room, e.bucket)).collect();
        // One transaction for the batch, as `put_envelope` is for one: the
        // envelopes and their buckets' entries land together or not at all.
        // A key already present (from before, or earlier in the batch) is
        // left as it is.
        let result = (&self.envelopes, &self.buckets).transaction(|(envelopes, index)| {
            for bucket in &buckets {
                if index.get(bucket)?.is_none() {
                    index.insert(bucket.as_slice(), &[][..])?;
                }
            }
            for (key, bytes) in &rows {
                if envelopes.get(key)?.is_none() {
                    envelopes.insert(key.as_slice(), *bytes)?;
                }
            }
            Ok::<_, ConflictableTransactionError<()>>(())
        });
        result.map_err(|e: TransactionError<()>| io(format!("{e:?}")))?;
        self.flush().await
    }

    async fn buckets(&self, room: RoomId) -> StoreResult<Vec<u32>> {
        let mut out = Vec::new();
        for item in self.buckets.scan_prefix(room.as_bytes()) {
            let (key, _) = item.map_err(io)?;
            let raw: [u8; 4] = key
                .get(32..36)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| RelayStoreError::Corrupt("bucket key".into()))?;
            out.push(u32::from_be_bytes(raw));
        }
        Ok(out)
    }

    async fn envelopes(
        &self,
        room: RoomId,
        bucket: u32,
        after: Option<EnvelopeKey>,
        limit: usize,
    ) -> StoreResult<Vec<StoredEnvelope>> {
        let prefix = partition(&room, bucket);
        let start = match after {
            Some(after) => Bound::Excluded(envelope_key(&room, bucket, &after)),
            None => Bound::Included(prefix.clone()),
        };
        let iter = self.envelopes.range::<Vec<u8>, _>((start, Bound::Unbounded));
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(io)?;
            if !key.starts_with(&prefix) || out.len() == limit {
                break;
            }
            out.push(Self::decode(room, bucket, &key, &value)?);
        }
        Ok(out)
    }

    async fn last_before(
        &self,
        room: RoomId,
        bucket: u32,
        before: EnvelopeKey,
        limit: usize,
    ) -> StoreResult<Vec<StoredEnvelope>> {
        let prefix = partition(&room, bucket);
        let to = envelope_key(&room, bucket, &before);
        let mut out = Vec::new();
        for item in self.envelopes.range(prefix.clone()..to).rev() {
            if out.len() == limit {
                break;
            }
            let (key, value) = item.map_err(io)?;
            out.push(Self::decode(room, bucket, &key, &value)?);
        }
        Ok(out)
    }

    async fn put_blob(&self, room: RoomId, hash: BlobHash, blob: &[u8]) -> StoreResult<Written> {
        check_blob(&hash, blob)?;
        self.insert_new(&self.blobs, blob_key(&room, &hash), blob).await
    }

    /// One row per blob, written whole: a blob is never half there. Its
    /// bytes are checked against its hash as the chunked backends check
    /// theirs.
    async fn blob(&self, room: RoomId, hash: BlobHash) -> StoreResult<Option<Vec<u8>>> {
        let Some(blob) = self.blobs.get(blob_key(&room, &hash)).map_err(io)? else {
            return Ok(None);
        };
        if !hashes_to(&hash, &blob) {
            return Err(RelayStoreError::Corrupt("blob does not hash to its key".into()));
        }
        Ok(Some(blob.to_vec()))
    }

    async fn erase_blob(&self, room: RoomId, hash: BlobHash) -> StoreResult<bool> {
        let held = self.blobs.remove(blob_key(&room, &hash)).map_err(io)?.is_some();
        self.flush().await?;
        Ok(held)
    }

    async fn put_governance(
        &self,
        room: RoomId,
        head: GovHead,
        change: &[u8],
    ) -> StoreResult<Written> {
        check_gov_change_len(change)?;
        self.insert_new(&self.governance, governance_key(&room, &head), change).await
    }

    async fn governance(&self, room: RoomId) -> StoreResult<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for item in self.governance.scan_prefix(room.as_bytes()) {
            let (_, value) = item.map_err(io)?;
            out.push(value.to_vec());
        }
        Ok(out)
    }
}
