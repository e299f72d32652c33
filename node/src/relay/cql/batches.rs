//! The unlogged batches a sync flight's envelopes are written in (see the
//! parent module's "Writes"): each inside one partition, capped in rows
//! and bytes, written without conditions.

use std::collections::BTreeMap;

use concord_core::RoomId;
use scylla::statement::batch::{Batch, BatchType};

use super::errors::execution_error;
use super::statements::Statements;
use super::{bucket_value, CqlRelayStore};
use crate::relay::{EnvelopeKey, StoreResult, StoredEnvelope};

/// Envelope rows in one unlogged batch. A batch is one mutation of one
/// partition on each replica; 256 rows of a typical flight are tens of
/// kilobytes.
pub(super) const BATCH_ROWS: usize = 256;

/// Envelope bytes in one unlogged batch (a single envelope larger than this
/// still goes alone). Single-partition batches are exempt from Cassandra's
/// batch-size failure threshold; 512 KiB also stays under ScyllaDB's 1 MiB
/// threshold and far under either server's largest mutation (half a
/// 32 MiB commitlog segment).
pub(super) const BATCH_BYTES: usize = 512 * 1024;

/// The envelope rows of a batch, without repeats, grouped into unlogged
/// batches that each stay inside one partition, hold at most
/// [`BATCH_ROWS`] rows and, unless one envelope alone is larger, at most
/// [`BATCH_BYTES`] of envelope bytes. Partitions in order, rows in sort
/// order.
pub(super) fn plan_batches(batch: &[StoredEnvelope]) -> Vec<Vec<&StoredEnvelope>> {
    let mut partitions: BTreeMap<(RoomId, u32), BTreeMap<EnvelopeKey, &StoredEnvelope>> =
        BTreeMap::new();
    for envelope in batch {
        partitions
            .entry((envelope.room, envelope.bucket))
            .or_default()
            .entry(envelope.key)
            .or_insert(envelope);
    }
    let mut out = Vec::new();
    for rows in partitions.into_values() {
        let mut current: Vec<&StoredEnvelope> = Vec::new();
        let mut bytes = 0;
        for envelope in rows.into_values() {
            let full = current.len() == BATCH_ROWS || bytes + envelope.bytes.len() > BATCH_BYTES;
            if full && !current.is_empty() {
                out.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += envelope.bytes.len();
            current.push(envelope);
        }
        if !current.is_empty() {
            out.push(current);
        }
    }
    out
}

impl CqlRelayStore {
    /// One unlogged batch of envelope rows of one partition, written
    /// without conditions: see the module docs.
    pub(super) async fn write_batch(
        &self,
        statements: &Statements,
        rows: Vec<&StoredEnvelope>,
    ) -> StoreResult<()> {
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in &rows {
            batch.append_statement(statements.overwrite_envelope.clone());
        }
        let values: Vec<_> = rows
            .iter()
            .map(|e| {
                (
                    e.room.as_bytes().as_slice(),
                    bucket_value(e.bucket),
                    e.key.to_bytes(),
                    e.bytes.as_slice(),
                )
            })
            .collect();
        self.retry
            .run("write envelopes", || async {
                self.session
                    .batch(&batch, &values)
                    .await
                    .map(drop)
                    .map_err(|e| execution_error("write envelopes", &e))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use concord_core::{AuthorId, Hlc};

    use super::*;

    fn envelope(room: u8, bucket: u32, hlc: u64, len: usize) -> StoredEnvelope {
        let bytes = vec![room; len];
        StoredEnvelope {
            room: RoomId::from_bytes([room; 32]),
            bucket,
            key: EnvelopeKey {
                hlc: Hlc::from_u64(hlc),
                author: AuthorId::from_bytes([1; 32]),
                id: *blake3::hash(&[&bytes[..], &hlc.to_be_bytes()].concat()).as_bytes(),
            },
            bytes,
        }
    }

    #[test]
    fn test_batches_stay_in_one_partition_drop_repeats_and_respect_their_caps() {
        let mut batch = Vec::new();
        // Two rooms, three partitions; 600 small rows in one of them.
        for i in 0..600 {
            batch.push(envelope(1, 7, i, 100));
        }
        for i in 0..5 {
            batch.push(envelope(2, 7, i, 100));
            batch.push(envelope(1, 8, i, 200_000));
        }
        // Every row again, in reverse.
        let repeated: Vec<_> = batch.iter().rev().cloned().chain(batch.clone()).collect();
        let planned = plan_batches(&repeated);
        let total: usize = planned.iter().map(Vec::len).sum();
        assert_eq!(total, 610, "each distinct row once");
        let mut seen = BTreeSet::new();
        for rows in &planned {
            let first = rows[0];
            assert!(rows.iter().all(|e| (e.room, e.bucket) == (first.room, first.bucket)));
            assert!(rows.len() <= BATCH_ROWS);
            let bytes: usize = rows.iter().map(|e| e.bytes.len()).sum();
            assert!(bytes <= BATCH_BYTES || rows.len() == 1, "{bytes} bytes in {}", rows.len());
            assert!(rows.windows(2).all(|w| w[0].key < w[1].key), "sort order, no repeats");
            for e in rows {
                assert!(seen.insert((e.room, e.bucket, e.key)), "a row in two batches");
            }
        }
        // 600 small rows: 256 + 256 + 88; five of 200,000 bytes: two per
        // batch; five small rows of the other room: one batch.
        let sizes: Vec<usize> = planned.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![256, 256, 88, 2, 2, 1, 5]);
        // One row larger than the byte cap goes alone.
        let huge = vec![envelope(3, 1, 1, BATCH_BYTES + 1), envelope(3, 1, 2, 10)];
        let sizes: Vec<usize> = plan_batches(&huge).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 1]);
        assert!(plan_batches(&[]).is_empty());
    }
}
