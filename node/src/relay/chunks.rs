//! The blob-chunk protocol of the wide-column relay stores (DynamoDB and
//! CQL): how a blob larger than one row is split, written, read back and
//! erased. Both backends run this one implementation over their own rows
//! ([`ChunkTable`]), so they behave alike; the conformance suite
//! (`node/tests/common/relay_conformance.rs`) pins the behaviour down.
//!
//! # Layout
//!
//! A blob of `len` bytes is `n` rows of one partition (room ‖ blob hash),
//! clustered by chunk index `0..n`: chunk `i` holds bytes
//! `[i·C, (i+1)·C)` of the blob, `C` being the backend's
//! [`ChunkTable::CHUNK_BYTES`]. The empty blob is one empty chunk. Chunk 0
//! is the manifest: besides its bytes it carries the chunk count `n` and
//! the blob's length `len` ([`Manifest`]), as the backend's integer type.
//!
//! # Writes: chunk 0 last
//!
//! Chunks `1..n` are written first, in index order and without
//! conditions (a retry, or the put after a crash, writes the same bytes:
//! the partition key names the blob's hash). Chunk 0 is written last, if
//! absent: it makes the blob visible, and a reader looks for it first, so
//! no reader ever sees a blob whose chunks are not all written. A crash in
//! between leaves chunks no manifest names; the next put of the blob
//! overwrites them and an erase removes them. A put of a blob of several
//! chunks whose manifest is there already writes nothing.
//!
//! # Reads
//!
//! The manifest first (absent: the blob is not held), then chunks
//! `1..n`, and the checks, each a [`RelayStoreError::Corrupt`]:
//!
//! - the manifest's count is not 1 for the empty blob or more than the
//!   blob has bytes (wrong count), or its length is over
//!   [`MAX_STORED_BLOB_BYTES`];
//! - fewer than `n - 1` chunks follow the manifest (short list), or their
//!   indices are not `1..n` (missing chunk). An erase deletes the manifest
//!   first, so either may also be an erase that ran between the two reads:
//!   the manifest is read again, and if it is gone the blob is not held;
//! - the chunks add up to another length than the manifest's;
//! - the bytes do not hash (blake3) to the blob's hash.
//!
//! Rows past chunk `n - 1` are not read: only a put cut short under
//! another chunk size could have left them, and an erase removes them.
//!
//! # Erase
//!
//! The manifest first (the blob is gone for readers at once; whether it
//! was there is the answer), then every other chunk of the partition,
//! named by a manifest or not: an erase cut short, or a put that crashed
//! before its manifest, is cleaned up by the next erase.
//!
//! The module needs no backend feature, so its tests run in every build
//! with the relay.

// Only the feature-gated backends run the protocol; without them it is
// compiled for its tests alone.
#![cfg_attr(not(any(feature = "dynamodb", feature = "cql")), allow(dead_code))]

use std::future::Future;

use concord_core::{BlobHash, RoomId};

use super::{check_blob, hashes_to, RelayStoreError, StoreResult, Written, MAX_STORED_BLOB_BYTES};

/// A blob's partition: its room and its hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BlobId {
    /// The room the blob belongs to.
    pub(super) room: RoomId,
    /// blake3 of the blob.
    pub(super) hash: BlobHash,
}

/// What chunk 0 says of its blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Manifest {
    /// Chunks in all, chunk 0 included: at least 1.
    pub(super) chunks: u32,
    /// The blob's length in bytes.
    pub(super) len: u32,
}

impl Manifest {
    /// Checks a manifest as a backend stored it (its integers widened to
    /// `i64`): see the module docs.
    pub(super) fn decode(chunks: i64, len: i64) -> StoreResult<Self> {
        let corrupt = |why: String| Err(RelayStoreError::Corrupt(format!("blob manifest: {why}")));
        let (Ok(chunks), Ok(len)) = (u32::try_from(chunks), u32::try_from(len)) else {
            return corrupt(format!("{chunks} chunks of {len} bytes"));
        };
        if u64::from(len) > MAX_STORED_BLOB_BYTES as u64 {
            return corrupt(format!("a length of {len} bytes"));
        }
        // Every chunk but the empty blob's one holds at least one byte.
        if chunks == 0 || chunks > len.max(1) {
            return corrupt(format!("{chunks} chunks for {len} bytes"));
        }
        Ok(Self { chunks, len })
    }
}

/// Chunk 0 as a backend stored it: its bytes and its manifest, unchecked.
#[derive(Clone, Debug)]
pub(super) struct StoredManifest {
    /// The blob's first bytes.
    pub(super) data: Vec<u8>,
    /// The chunk count.
    pub(super) chunks: i64,
    /// The blob's length.
    pub(super) len: i64,
}

/// A chunk after the manifest as a backend read it: its index as stored,
/// and its bytes.
pub(super) type ReadChunk = (i64, Vec<u8>);

/// One write of a blob's put, in the order [`plan`] gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Write<'a> {
    /// Chunk `index` (1 or more), unconditionally.
    Chunk {
        /// Its index.
        index: u32,
        /// Its bytes.
        data: &'a [u8],
    },
    /// Chunk 0 with the manifest, if absent: always the last write.
    Manifest {
        /// The blob's first bytes.
        data: &'a [u8],
        /// The manifest.
        manifest: Manifest,
    },
}

/// A wide-column backend's blob rows: what the protocol needs of it. Each
/// call is one request (retried by the backend as its other calls are).
pub(super) trait ChunkTable: Sync {
    /// The most blob bytes in one row.
    const CHUNK_BYTES: usize;

    /// Writes chunk `index` (1 or more) without conditions.
    fn put_chunk(
        &self,
        blob: BlobId,
        index: u32,
        data: &[u8],
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Writes chunk 0 with its manifest if it is absent.
    fn put_manifest(
        &self,
        blob: BlobId,
        data: &[u8],
        manifest: Manifest,
    ) -> impl Future<Output = StoreResult<Written>> + Send;

    /// Chunk 0, if present, as stored.
    fn manifest(
        &self,
        blob: BlobId,
    ) -> impl Future<Output = StoreResult<Option<StoredManifest>>> + Send;

    /// Up to `limit` chunks with an index of 1 or more, in index order,
    /// each with its index as stored.
    fn chunks(
        &self,
        blob: BlobId,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Vec<ReadChunk>>> + Send;

    /// Deletes chunk 0; whether it was there.
    fn erase_manifest(&self, blob: BlobId) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Deletes every chunk with an index of 1 or more.
    fn erase_chunks(&self, blob: BlobId) -> impl Future<Output = StoreResult<()>> + Send;
}

/// The writes that put `blob` in chunks of at most `chunk_bytes`: chunks
/// 1.. in index order, then the manifest. Refuses a blob larger than
/// [`MAX_STORED_BLOB_BYTES`].
pub(super) fn plan(blob: &[u8], chunk_bytes: usize) -> StoreResult<Vec<Write<'_>>> {
    let too_large =
        || RelayStoreError::TooLarge { what: "blob", len: blob.len(), max: MAX_STORED_BLOB_BYTES };
    if blob.len() > MAX_STORED_BLOB_BYTES {
        return Err(too_large());
    }
    let pieces: Vec<&[u8]> =
        if blob.is_empty() { vec![blob] } else { blob.chunks(chunk_bytes.max(1)).collect() };
    let manifest = Manifest {
        chunks: u32::try_from(pieces.len()).map_err(|_| too_large())?,
        len: u32::try_from(blob.len()).map_err(|_| too_large())?,
    };
    let mut writes: Vec<Write<'_>> = (1u32..)
        .zip(pieces.iter().skip(1))
        .map(|(index, data)| Write::Chunk { index, data })
        .collect();
    writes.push(Write::Manifest { data: pieces[0], manifest });
    Ok(writes)
}

/// Why a read did not give a blob.
#[derive(Debug, PartialEq, Eq)]
enum Unassembled {
    /// Chunks are missing: the blob is corrupt, or was erased between the
    /// manifest's read and the chunks'.
    Incomplete(String),
    /// The blob is corrupt.
    Corrupt(String),
}

/// The blob from its manifest, its first bytes and the chunks after them,
/// with every check of the module docs.
fn assemble(
    hash: &BlobHash,
    manifest: Manifest,
    first: Vec<u8>,
    rest: Vec<ReadChunk>,
) -> Result<Vec<u8>, Unassembled> {
    let count = manifest.chunks as usize;
    if rest.len() < count - 1 {
        return Err(Unassembled::Incomplete(format!(
            "a blob of {count} chunks, {} found after its manifest",
            rest.len()
        )));
    }
    if rest.len() > count - 1 {
        return Err(Unassembled::Corrupt(format!(
            "a blob of {count} chunks, {} read after its manifest",
            rest.len()
        )));
    }
    if let Some((want, (index, _))) = (1i64..).zip(&rest).find(|(want, (index, _))| index != want) {
        return Err(Unassembled::Incomplete(format!("chunk {want} missing (found {index})")));
    }
    let mut blob = first;
    blob.reserve((manifest.len as usize).saturating_sub(blob.len()));
    for (_, data) in rest {
        blob.extend_from_slice(&data);
    }
    if blob.len() != manifest.len as usize {
        return Err(Unassembled::Corrupt(format!(
            "a blob of {} bytes, its manifest says {}",
            blob.len(),
            manifest.len
        )));
    }
    if !hashes_to(hash, &blob) {
        return Err(Unassembled::Corrupt("the blob does not hash to its key".into()));
    }
    Ok(blob)
}

/// Writes a blob if absent: see the module docs.
pub(super) async fn put<T: ChunkTable>(
    table: &T,
    blob: BlobId,
    bytes: &[u8],
) -> StoreResult<Written> {
    check_blob(&blob.hash, bytes)?;
    let writes = plan(bytes, T::CHUNK_BYTES)?;
    // Spare rewriting a mebibyte when the blob is held already.
    if writes.len() > 1 && table.manifest(blob).await?.is_some() {
        return Ok(Written::AlreadyPresent);
    }
    for write in writes {
        match write {
            Write::Chunk { index, data } => table.put_chunk(blob, index, data).await?,
            Write::Manifest { data, manifest } => {
                return table.put_manifest(blob, data, manifest).await;
            }
        }
    }
    // `plan` always ends with the manifest.
    Err(RelayStoreError::Corrupt("a blob put without a manifest".into()))
}

/// Reads a blob, if held: see the module docs.
pub(super) async fn get<T: ChunkTable>(table: &T, blob: BlobId) -> StoreResult<Option<Vec<u8>>> {
    let Some(stored) = table.manifest(blob).await? else {
        return Ok(None);
    };
    let manifest = Manifest::decode(stored.chunks, stored.len)?;
    let rest = match manifest.chunks {
        1 => Vec::new(),
        n => table.chunks(blob, n as usize - 1).await?,
    };
    match assemble(&blob.hash, manifest, stored.data, rest) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(Unassembled::Incomplete(why)) => {
            if table.manifest(blob).await?.is_none() {
                // Erased between the two reads.
                return Ok(None);
            }
            Err(RelayStoreError::Corrupt(why))
        }
        Err(Unassembled::Corrupt(why)) => Err(RelayStoreError::Corrupt(why)),
    }
}

/// Erases a blob and every chunk stored for it; whether it was held.
pub(super) async fn erase<T: ChunkTable>(table: &T, blob: BlobId) -> StoreResult<bool> {
    let held = table.erase_manifest(blob).await?;
    table.erase_chunks(blob).await?;
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(blob: &[u8]) -> BlobHash {
        BlobHash::from_bytes(*blake3::hash(blob).as_bytes())
    }

    /// A blob whose every byte tells its position, so a chunk out of place
    /// shows.
    fn blob(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Runs `plan` and returns the chunks it writes (index, bytes) and the
    /// manifest write, checking that the manifest comes last and alone.
    fn planned(blob: &[u8], chunk: usize) -> (Manifest, Vec<u8>, Vec<ReadChunk>) {
        let writes = plan(blob, chunk).unwrap();
        let (last, before) = writes.split_last().unwrap();
        let Write::Manifest { data, manifest } = *last else {
            panic!("the last write is not the manifest: {last:?}");
        };
        let chunks = before
            .iter()
            .map(|w| match *w {
                Write::Chunk { index, data } => (i64::from(index), data.to_vec()),
                Write::Manifest { .. } => panic!("a manifest before the last write"),
            })
            .collect();
        (manifest, data.to_vec(), chunks)
    }

    #[test]
    fn test_plan_writes_chunks_in_order_then_the_manifest_last() {
        let c = 1000;
        for (len, count) in
            [(0, 1), (1, 1), (c - 1, 1), (c, 1), (c + 1, 2), (2 * c, 2), (2 * c + 1, 3), (5 * c, 5)]
        {
            let bytes = blob(len);
            let (manifest, first, chunks) = planned(&bytes, c);
            assert_eq!(manifest, Manifest { chunks: count, len: len as u32 }, "{len} bytes");
            let indices: Vec<i64> = chunks.iter().map(|(i, _)| *i).collect();
            assert_eq!(indices, (1..i64::from(count)).collect::<Vec<_>>(), "{len} bytes");
            assert!(first.len() <= c && chunks.iter().all(|(_, d)| d.len() <= c && !d.is_empty()));
            let whole: Vec<u8> = std::iter::once(first)
                .chain(chunks.into_iter().map(|(_, d)| d))
                .flatten()
                .collect();
            assert_eq!(whole, bytes, "{len} bytes reassemble");
        }
    }

    #[test]
    fn test_plan_refuses_a_blob_over_the_largest() {
        let bytes = vec![0; MAX_STORED_BLOB_BYTES + 1];
        let err = plan(&bytes, 1000).unwrap_err();
        assert!(matches!(err, RelayStoreError::TooLarge { .. }), "{err:?}");
        assert_eq!(plan(&bytes[1..], 350_000).unwrap().len(), 3, "the largest: three chunks");
    }

    #[test]
    fn test_manifests_that_cannot_be_are_corrupt() {
        assert_eq!(Manifest::decode(1, 0).unwrap(), Manifest { chunks: 1, len: 0 });
        assert_eq!(Manifest::decode(3, 700_001).unwrap(), Manifest { chunks: 3, len: 700_001 });
        let max = MAX_STORED_BLOB_BYTES as i64;
        for (chunks, len) in
            [(0, 10), (2, 0), (11, 10), (-1, 10), (1, -1), (1, max + 1), (i64::MAX, 10)]
        {
            let err = Manifest::decode(chunks, len).unwrap_err();
            assert!(matches!(err, RelayStoreError::Corrupt(_)), "{chunks}, {len}: {err:?}");
        }
    }

    #[test]
    fn test_whole_blobs_reassemble_at_and_around_chunk_boundaries() {
        for len in [0, 1, 999, 1000, 1001, 2000, 2001, 4500] {
            let bytes = blob(len);
            let (manifest, first, rest) = planned(&bytes, 1000);
            assert_eq!(assemble(&hash(&bytes), manifest, first, rest), Ok(bytes), "{len}");
        }
    }

    #[test]
    fn test_a_short_list_or_a_missing_chunk_is_incomplete_and_bad_bytes_are_corrupt() {
        let bytes = blob(3500);
        let h = hash(&bytes);
        let (manifest, first, rest) = planned(&bytes, 1000);
        assert_eq!(rest.len(), 3);
        let incomplete =
            |r: Result<Vec<u8>, Unassembled>| matches!(r, Err(Unassembled::Incomplete(_)));
        let corrupt = |r: Result<Vec<u8>, Unassembled>| matches!(r, Err(Unassembled::Corrupt(_)));

        // Short list: the last chunk, or the first after the manifest, is
        // not there.
        assert!(incomplete(assemble(&h, manifest, first.clone(), rest[..2].to_vec())));
        assert!(incomplete(assemble(&h, manifest, first.clone(), rest[1..].to_vec())));
        // Missing chunk: as many rows as wanted, but a gap (chunk 2 gone,
        // a stray chunk 4 read in its place).
        let gap = vec![rest[0].clone(), rest[2].clone(), (4, vec![9; 10])];
        assert!(incomplete(assemble(&h, manifest, first.clone(), gap)));
        // Out of order is a gap too.
        let swapped = vec![rest[1].clone(), rest[0].clone(), rest[2].clone()];
        assert!(incomplete(assemble(&h, manifest, first.clone(), swapped)));
        // More rows than the manifest names: the backend read past its limit.
        let mut extra = rest.clone();
        extra.push((4, vec![1]));
        assert!(corrupt(assemble(&h, manifest, first.clone(), extra)));
        // A length that is not the manifest's.
        let mut shorter = rest.clone();
        shorter[2].1.pop();
        assert!(corrupt(assemble(&h, manifest, first.clone(), shorter)));
        // Same length, other bytes: the hash does not match.
        let mut flipped = rest.clone();
        flipped[1].1[0] ^= 1;
        assert!(corrupt(assemble(&h, manifest, first.clone(), flipped)));
        assert!(corrupt(assemble(&hash(b"another blob"), manifest, first.clone(), rest.clone())));
        // And the untouched rows still make the blob.
        assert_eq!(assemble(&h, manifest, first, rest), Ok(bytes));
    }
}
