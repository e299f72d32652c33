//! The `blobs` table as the chunk protocol's rows (`relay/chunks.rs`):
//! partition key (`room`, `hash`), clustering key `chunk` (an `int`),
//! `data` the chunk's bytes, and on chunk 0 also `chunks` and `len`
//! (`int`s). The manifest is written and erased by lightweight
//! transactions, the other chunks by plain writes and one range delete,
//! so no row is written both ways (see the parent module's "Writes").

use concord_core::{BlobHash, RoomId};

use super::errors::{applied, corrupt};
use super::CqlRelayStore;
use crate::relay::chunks::{BlobId, ChunkTable, Manifest, ReadChunk, StoredManifest};
use crate::relay::{StoreResult, Written};

/// The chunk protocol's name of a blob.
pub(super) fn blob_id(room: RoomId, hash: BlobHash) -> BlobId {
    BlobId { room, hash }
}

/// The values of a blob's partition key.
fn partition(blob: &BlobId) -> (&[u8], &[u8]) {
    (blob.room.as_bytes().as_slice(), blob.hash.as_bytes().as_slice())
}

/// A count as CQL's `int`. The largest blob is five chunks of about a
/// mebibyte in all, so every count fits; one that did not would be a bug.
fn int(what: &str, n: u32) -> StoreResult<i32> {
    i32::try_from(n).map_err(|_| corrupt(what, format!("{n} does not fit an int")))
}

impl ChunkTable for CqlRelayStore {
    const CHUNK_BYTES: usize = Self::BLOB_CHUNK_BYTES;

    async fn put_chunk(&self, blob: BlobId, index: u32, data: &[u8]) -> StoreResult<()> {
        let s = self.statements().await?;
        let (room, hash) = partition(&blob);
        let values = (room, hash, int("put blob chunk", index)?, data);
        self.execute("put blob chunk", &s.put_chunk, values).await.map(drop)
    }

    async fn put_manifest(
        &self,
        blob: BlobId,
        data: &[u8],
        manifest: Manifest,
    ) -> StoreResult<Written> {
        let s = self.statements().await?;
        let (room, hash) = partition(&blob);
        let (count, len) = (int("put blob", manifest.chunks)?, int("put blob", manifest.len)?);
        let result =
            self.execute("put blob", &s.put_manifest, (room, hash, data, count, len)).await?;
        Ok(if applied("put blob", result)? { Written::Inserted } else { Written::AlreadyPresent })
    }

    async fn manifest(&self, blob: BlobId) -> StoreResult<Option<StoredManifest>> {
        let s = self.statements().await?;
        let rows: Vec<(Vec<u8>, i32, i32)> =
            self.select("read blob", &s.manifest, partition(&blob), 1).await?;
        Ok(rows.into_iter().next().map(|(data, chunks, len)| StoredManifest {
            data,
            chunks: i64::from(chunks),
            len: i64::from(len),
        }))
    }

    /// One `SELECT` of the partition after chunk 0, in clustering order,
    /// a mebibyte a page.
    async fn chunks(&self, blob: BlobId, limit: usize) -> StoreResult<Vec<ReadChunk>> {
        let s = self.statements().await?;
        let rows: Vec<(i32, Vec<u8>)> =
            self.select("read blob chunks", &s.chunks, partition(&blob), limit).await?;
        Ok(rows.into_iter().map(|(index, data)| (i64::from(index), data)).collect())
    }

    /// `DELETE ... IF EXISTS`, whose outcome says whether the blob was held.
    async fn erase_manifest(&self, blob: BlobId) -> StoreResult<bool> {
        let s = self.statements().await?;
        let result = self.execute("erase blob", &s.erase_manifest, partition(&blob)).await?;
        applied("erase blob", result)
    }

    /// One range delete of every chunk after 0.
    async fn erase_chunks(&self, blob: BlobId) -> StoreResult<()> {
        let s = self.statements().await?;
        self.execute("erase blob chunks", &s.erase_chunks, partition(&blob)).await.map(drop)
    }
}
