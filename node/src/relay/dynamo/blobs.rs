//! The `blobs` table as the chunk protocol's rows (`relay/chunks.rs`):
//! partition key `p` = room ‖ blob hash, sort key `s` = the chunk index (a
//! number), `d` the chunk's bytes, and on chunk 0 also `n` (the chunk
//! count) and `len` (the blob's length).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use concord_core::{BlobHash, RoomId};

use super::requests::{binary, get_binary, get_number, number, sdk_error, Item};
use super::{DynamoRelayStore, CHUNKS, DATA, LEN, PK, SK};
use crate::relay::chunks::{BlobId, ChunkTable, Manifest, ReadChunk, StoredManifest};
use crate::relay::{StoreResult, Written};

/// The chunk protocol's name of a blob.
pub(super) fn blob_id(room: RoomId, hash: BlobHash) -> BlobId {
    BlobId { room, hash }
}

/// A blob's partition key.
fn blob_partition(blob: BlobId) -> Vec<u8> {
    [blob.room.as_bytes().as_slice(), blob.hash.as_bytes()].concat()
}

/// The key of chunk `index` of a blob.
fn chunk_key(blob: BlobId, index: u32) -> Item {
    HashMap::from([
        (PK.to_owned(), binary(blob_partition(blob))),
        (SK.to_owned(), AttributeValue::N(index.to_string())),
    ])
}

/// A stored number as the protocol's `i64`; one that is not a number of
/// that range is corrupt.
fn get_i64(item: &Item, name: &str) -> StoreResult<i64> {
    let n = get_number(item, name)?;
    i64::try_from(n).map_err(|_| crate::relay::RelayStoreError::Corrupt(format!("{name}: {n}")))
}

impl ChunkTable for DynamoRelayStore {
    const CHUNK_BYTES: usize = Self::BLOB_CHUNK_BYTES;

    async fn put_chunk(&self, blob: BlobId, index: u32, data: &[u8]) -> StoreResult<()> {
        let mut item = chunk_key(blob, index);
        item.insert(DATA.to_owned(), binary(data));
        self.put(&self.blobs, item).await
    }

    async fn put_manifest(
        &self,
        blob: BlobId,
        data: &[u8],
        manifest: Manifest,
    ) -> StoreResult<Written> {
        let mut item = chunk_key(blob, 0);
        item.insert(DATA.to_owned(), binary(data));
        item.insert(CHUNKS.to_owned(), number(manifest.chunks as usize));
        item.insert(LEN.to_owned(), number(manifest.len as usize));
        self.put_new(&self.blobs, item).await
    }

    /// One strongly consistent `GetItem`.
    async fn manifest(&self, blob: BlobId) -> StoreResult<Option<StoredManifest>> {
        let key = chunk_key(blob, 0);
        let item = self
            .retry
            .run("get blob", || {
                let request = self
                    .client
                    .get_item()
                    .table_name(&self.blobs)
                    .set_key(Some(key.clone()))
                    .consistent_read(true);
                async move {
                    let out = request.send().await.map_err(|e| sdk_error("get blob", &e))?;
                    Ok(out.item().cloned())
                }
            })
            .await?;
        let Some(item) = item else { return Ok(None) };
        Ok(Some(StoredManifest {
            data: get_binary(&item, DATA)?.to_vec(),
            chunks: get_i64(&item, CHUNKS)?,
            len: get_i64(&item, LEN)?,
        }))
    }

    /// One `Query` of the partition after chunk 0, followed across pages;
    /// DynamoDB orders a numeric sort key by value.
    async fn chunks(&self, blob: BlobId, limit: usize) -> StoreResult<Vec<ReadChunk>> {
        let after_manifest = Some((">", number(0)));
        let items =
            self.query(&self.blobs, blob_partition(blob), after_manifest, true, limit).await?;
        items
            .iter()
            .map(|item| Ok((get_i64(item, SK)?, get_binary(item, DATA)?.to_vec())))
            .collect()
    }

    async fn erase_manifest(&self, blob: BlobId) -> StoreResult<bool> {
        self.delete(&self.blobs, chunk_key(blob, 0)).await
    }

    /// DynamoDB has no range delete: the chunks' keys are queried, then
    /// each is deleted.
    async fn erase_chunks(&self, blob: BlobId) -> StoreResult<()> {
        let after_manifest = Some((">", number(0)));
        let rest =
            self.query(&self.blobs, blob_partition(blob), after_manifest, true, usize::MAX).await?;
        for item in rest {
            let key = item.into_iter().filter(|(name, _)| name == PK || name == SK).collect();
            self.delete(&self.blobs, key).await?;
        }
        Ok(())
    }
}
