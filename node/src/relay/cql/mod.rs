//! The relay store on CQL: ScyllaDB or Apache Cassandra (4.0 or later),
//! through the ScyllaDB driver (`scylla`), for a relay that runs on its own
//! cluster.
//!
//! # Tables
//!
//! Five tables in one keyspace, the caller's, made by
//! [`CqlRelayStore::create_schema`]. Keys are blobs and big-endian where
//! their order matters; CQL compares blobs as unsigned bytes, so byte order
//! is sort order:
//!
//! | table       | partition key           | clustering key              | columns |
//! |-------------|-------------------------|-----------------------------|---------|
//! | `envelopes` | `room` blob, `bucket` bigint | `key` blob: hlc ‖ author ‖ envelope id ([`EnvelopeKey::to_bytes`]) | `envelope` blob: the signed envelope |
//! | `buckets`   | `room` blob             | `bucket` bigint             | none |
//! | `blobs`     | `room` blob, `hash` blob | `chunk` int                | `data` blob; on chunk 0 also `chunks` int and `len` int |
//! | `rooms`     | `room` blob             | none                        | `genesis` blob |
//! | `governance` | `room` blob            | `head` blob                 | `change` blob: the signed governance change |
//!
//! The sort key of an envelope is one blob rather than three columns
//! because CQL has no unsigned 64-bit type: a `bigint` HLC would sort
//! stamps at or above 2^63 before the others. Buckets are `bigint` so that
//! every `u32` sorts in order. "The last N envelopes before T" is
//! `WHERE room = ? AND bucket = ? AND key < ? ORDER BY key DESC LIMIT ?`,
//! one range read in one partition.
//!
//! # Writes
//!
//! An envelope, room, governance change or blob is written with a
//! lightweight transaction, `INSERT ... IF NOT EXISTS`; one that is not
//! applied is [`Written::AlreadyPresent`]. An envelope's bucket entry is
//! written first (a plain `INSERT`: it is the same row every time), then
//! the envelope, so a crash between the two leaves at worst an empty bucket
//! listed, never an envelope its bucket listing misses.
//!
//! A batch of envelopes ([`RelayStore::put_envelopes`], one sync flight)
//! writes its distinct bucket entries first, then its envelopes without
//! conditions, as unlogged batches that each stay inside one partition
//! (one mutation on the replicas, exempt from the servers' multi-partition
//! batch-size limits) of at most [`BATCH_ROWS`](batches::BATCH_ROWS) rows
//! and [`BATCH_BYTES`](batches::BATCH_BYTES) bytes,
//! [`CqlRelayStore::BATCH_CONCURRENCY`] in flight. An unconditional
//! `INSERT` over an existing envelope row is safe: the sort key ends with
//! blake3 of the envelope's bytes, so it writes the identical row, and the
//! partition still holds the envelope exactly once. A later single put of
//! the same envelope sees the row (the batch was acknowledged by a quorum,
//! which the transaction's Paxos read overlaps) and reports
//! [`Written::AlreadyPresent`].
//!
//! Blobs are split into chunks of at most
//! [`CqlRelayStore::BLOB_CHUNK_BYTES`] by the protocol every wide-column
//! backend shares (`relay/chunks.rs`): chunks 1.. are plain `INSERT`s,
//! written first; chunk 0, the manifest, is the conditional write and makes
//! the blob visible. An erase deletes the manifest with `DELETE ... IF
//! EXISTS` (which says whether the blob was held), then the other chunks
//! with one range delete. No row is written
//! both by transactions and by plain writes with different contents: rooms,
//! governance changes and manifests only by transactions, chunks and
//! bucket entries only by plain writes, and envelope rows by both but
//! always with the same bytes.
//! Plain writes carry client-side timestamps from one monotonic generator
//! per store, so a chunk written again after an erase is newer than that
//! erase's range tombstone.
//!
//! # Consistency
//!
//! Reads and writes run at `QUORUM`, and transactions with `SERIAL` Paxos;
//! with a [`CqlOptions::datacenter`], at `LOCAL_QUORUM` and `LOCAL_SERIAL`
//! in that datacenter. Either way a relay reads its own acknowledged
//! writes: a quorum read overlaps the quorum that acknowledged the write.
//!
//! # Errors and retries
//!
//! `Unavailable`, `Overloaded`, read and write timeouts and failures, a
//! bootstrapping coordinator, a server error, rate limiting, a broken or
//! refused connection and a client-side timeout are
//! [`RelayStoreError::Unavailable`] and are retried here with bounded,
//! jittered exponential backoff ([`RetryPolicy`]); the driver's own
//! retry policy is off ([`FallthroughRetryPolicy`]) so that there is one
//! retry loop to reason about. A transaction whose outcome was lost (a
//! write timeout of type `CAS`) and that is then retried finds its own row
//! and reports [`Written::AlreadyPresent`]: the row is there exactly once
//! either way. Everything else (a syntax or schema error such as a missing
//! keyspace or table, bad credentials, a refused permission) is
//! [`RelayStoreError::Setup`] and is not retried.
//!
//! Statements are prepared on first use, not by
//! [`CqlRelayStore::connect`], because the tables they name may not exist
//! until [`CqlRelayStore::create_schema`] has run.
//!
//! ScyllaDB releases whose lightweight transactions do not work on tablets
//! answer every conditional write with "LWT is not yet supported with
//! tablets" (a [`RelayStoreError::Setup`]); there, create the keyspace
//! yourself with `AND tablets = {'enabled': false}` before
//! [`CqlRelayStore::create_schema`], which leaves an existing keyspace as
//! it is.
//!
//! # Files
//!
//! This file has the store, its options, its schema and the
//! [`RelayStore`] calls; `statements.rs` the prepared statements and how
//! they run (paging, retries); `errors.rs` which driver errors are
//! transient; `batches.rs` the unlogged batches of a sync flight;
//! `blobs.rs` the blob rows the chunk protocol runs on.

mod batches;
mod blobs;
mod errors;
mod statements;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use concord_core::{BlobHash, Genesis, GovHead, RoomId};
use futures::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::statement::{Consistency, SerialConsistency, Statement};
use tokio::sync::OnceCell;

use self::batches::plan_batches;
use self::blobs::blob_id;
use self::errors::{applied, classify, execution_error, session_transient};
use self::statements::Statements;
use super::retry::{Retrier, RetryPolicy};
use super::{
    check_gov_change_len, chunks, Bound, EnvelopeKey, RelayStore, RelayStoreError, StoreResult,
    StoredEnvelope, Written,
};

/// How long opening a connection may take; a node that takes longer is
/// better retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The client-side timeout of one request. The servers time a request out
/// themselves after about two seconds (a write) or five (a read), and then
/// answer with a timeout error that is retried; this catches a node that
/// does not answer at all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The client-side timeout of one schema change, which waits for every
/// node to agree on the new schema.
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest keyspace name the servers accept.
const MAX_KEYSPACE_LEN: usize = 48;

/// The name the CQL store's [`RetryPolicy`] had when each backend kept
/// its own copy; callers outside the relay module still use it.
pub type CqlRetryPolicy = RetryPolicy;

/// How a [`CqlRelayStore`] reaches its cluster, beyond the contact nodes
/// and the keyspace.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct CqlOptions {
    /// The relay's datacenter. With one, requests go to its nodes only, at
    /// `LOCAL_QUORUM` and `LOCAL_SERIAL`, and
    /// [`CqlRelayStore::create_schema`] replicates the keyspace there;
    /// without, at `QUORUM` and `SERIAL` over the whole cluster.
    pub datacenter: Option<String>,
    /// A user name and password, for a cluster with password
    /// authentication.
    pub credentials: Option<(String, String)>,
}

impl CqlOptions {
    /// These options with the relay's datacenter.
    pub fn datacenter(mut self, name: impl Into<String>) -> Self {
        self.datacenter = Some(name.into());
        self
    }

    /// These options with a user name and password.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }
}

impl std::fmt::Debug for CqlOptions {
    /// Leaves the password out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlOptions")
            .field("datacenter", &self.datacenter)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .finish()
    }
}

/// The relay store on CQL. Cloning shares the session.
#[derive(Clone, Debug)]
pub struct CqlRelayStore {
    session: Arc<Session>,
    keyspace: String,
    datacenter: Option<String>,
    /// Prepared on first use: see the module docs.
    statements: Arc<OnceCell<Statements>>,
    retry: Retrier,
}

/// A keyspace name the servers accept unquoted: a lowercase letter, then
/// lowercase letters, digits and underscores, at most 48 in all. (Unquoted
/// names are folded to lowercase, so an uppercase letter would name
/// another keyspace than the caller wrote.)
fn valid_keyspace(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= MAX_KEYSPACE_LEN
}

fn bucket_value(bucket: u32) -> i64 {
    i64::from(bucket)
}

impl CqlRelayStore {
    /// Unlogged batches one [`RelayStore::put_envelopes`] keeps in flight,
    /// and bucket entries it writes at once. A flight of a mebibyte is a
    /// few batches per bucket; eight overlap their round trips without
    /// letting one sync session's flight take every connection from the
    /// relay's other sessions.
    pub const BATCH_CONCURRENCY: usize = 8;

    /// The largest chunk of a blob in one row. Both servers advise cells
    /// well under a megabyte (ScyllaDB logs cells over 1 MB as large); a
    /// quarter of that keeps each write, and each Paxos round of a
    /// manifest, small. A blob of
    /// [`MAX_STORED_BLOB_BYTES`](super::MAX_STORED_BLOB_BYTES) is five
    /// chunks.
    pub const BLOB_CHUNK_BYTES: usize = 256 * 1024;

    /// Connects to the cluster that `nodes` (`host:port` or `host`, port
    /// 9042 by default) belong to; the driver finds the other nodes itself.
    /// The store's tables live in `keyspace`; create them once with
    /// [`CqlRelayStore::create_schema`].
    ///
    /// A cluster that cannot be reached is
    /// [`RelayStoreError::Unavailable`]; no nodes, a keyspace name the
    /// servers would not accept unquoted, or refused credentials are
    /// [`RelayStoreError::Setup`].
    pub async fn connect<I, S>(nodes: I, keyspace: &str, options: CqlOptions) -> StoreResult<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes: Vec<String> = nodes.into_iter().map(|n| n.as_ref().trim().to_owned()).collect();
        if nodes.is_empty() || nodes.iter().any(String::is_empty) {
            return Err(RelayStoreError::Setup(format!("no CQL contact nodes in {nodes:?}")));
        }
        if !valid_keyspace(keyspace) {
            return Err(RelayStoreError::Setup(format!(
                "keyspace {keyspace:?} is not a lowercase letter followed by at most \
                 {} lowercase letters, digits and underscores",
                MAX_KEYSPACE_LEN - 1
            )));
        }
        let local = options.datacenter.is_some();
        let profile = ExecutionProfile::builder()
            .consistency(if local { Consistency::LocalQuorum } else { Consistency::Quorum })
            .serial_consistency(Some(if local {
                SerialConsistency::LocalSerial
            } else {
                SerialConsistency::Serial
            }))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .retry_policy(Arc::new(FallthroughRetryPolicy::new()))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&nodes)
            .connection_timeout(CONNECT_TIMEOUT)
            .default_execution_profile_handle(profile.into_handle())
            .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()))
            // Routing needs this keyspace's replication and tables only.
            .keyspaces_to_fetch([keyspace])
            .fetch_full_schema_metadata(false);
        if let Some(datacenter) = &options.datacenter {
            builder = builder.prefer_datacenter(datacenter.clone());
        }
        if let Some((user, password)) = &options.credentials {
            builder = builder.user(user, password);
        }
        let session = builder.build().await.map_err(|e| {
            classify(session_transient(&e), format!("connect to {}: {e}", nodes.join(",")))
        })?;
        Ok(Self {
            session: Arc::new(session),
            keyspace: keyspace.to_owned(),
            datacenter: options.datacenter,
            statements: Arc::new(OnceCell::new()),
            retry: Retrier::new("cql"),
        })
    }

    /// The same store with another retry policy.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry.set_policy(policy);
        self
    }

    /// The keyspace the store's tables are in.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// Creates the keyspace, replicated `replication_factor` times
    /// (`NetworkTopologyStrategy`, in the [`CqlOptions::datacenter`] if one
    /// was given, else in every datacenter), and the five tables, if
    /// absent, and waits until every node agrees on the schema.
    /// Idempotent: a keyspace or table that exists is left as it is.
    pub async fn create_schema(&self, replication_factor: u32) -> StoreResult<()> {
        if replication_factor == 0 {
            return Err(RelayStoreError::Setup("a replication factor of 0".into()));
        }
        let replication = match &self.datacenter {
            Some(datacenter) => format!(
                "{{'class': 'NetworkTopologyStrategy', '{}': {replication_factor}}}",
                datacenter.replace('\'', "''")
            ),
            None => format!(
                "{{'class': 'NetworkTopologyStrategy', 'replication_factor': {replication_factor}}}"
            ),
        };
        let ks = &self.keyspace;
        let statements = [
            format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.envelopes (room blob, bucket bigint, key blob, \
                 envelope blob, PRIMARY KEY ((room, bucket), key)) \
                 WITH CLUSTERING ORDER BY (key ASC)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.buckets (room blob, bucket bigint, \
                 PRIMARY KEY ((room), bucket)) WITH CLUSTERING ORDER BY (bucket ASC)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.blobs (room blob, hash blob, chunk int, \
                 data blob, chunks int, len int, PRIMARY KEY ((room, hash), chunk))"
            ),
            format!("CREATE TABLE IF NOT EXISTS {ks}.rooms (room blob PRIMARY KEY, genesis blob)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.governance (room blob, head blob, change blob, \
                 PRIMARY KEY ((room), head))"
            ),
        ];
        for text in statements {
            let mut statement = Statement::new(text);
            statement.set_request_timeout(Some(DDL_TIMEOUT));
            self.retry
                .run("create schema", || {
                    let statement = statement.clone();
                    async move {
                        self.session
                            .query_unpaged(statement, ())
                            .await
                            .map(drop)
                            .map_err(|e| execution_error("create schema", &e))
                    }
                })
                .await?;
        }
        Ok(())
    }

    async fn put_bucket(
        &self,
        statements: &Statements,
        room: RoomId,
        bucket: u32,
    ) -> StoreResult<()> {
        let values = (room.as_bytes().as_slice(), bucket_value(bucket));
        self.execute("put bucket", &statements.put_bucket, values).await.map(drop)
    }

    async fn range(
        &self,
        room: RoomId,
        bucket: u32,
        from: Bound,
        limit: usize,
    ) -> StoreResult<Vec<StoredEnvelope>> {
        if limit == 0 {
            // CQL refuses `LIMIT 0`.
            return Ok(Vec::new());
        }
        let s = self.statements().await?;
        let room_bytes = room.as_bytes().as_slice();
        let bucket_v = bucket_value(bucket);
        let cap = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<(Vec<u8>, Vec<u8>)> = match from {
            Bound::Start => {
                let values = (room_bytes, bucket_v, cap);
                self.select("read envelopes", &s.envelopes_from_start, values, limit).await?
            }
            Bound::After(key) => {
                let values = (room_bytes, bucket_v, key.to_bytes(), cap);
                self.select("read envelopes", &s.envelopes_after, values, limit).await?
            }
            Bound::Before(key) => {
                let values = (room_bytes, bucket_v, key.to_bytes(), cap);
                self.select("read envelopes", &s.envelopes_before, values, limit).await?
            }
        };
        rows.into_iter()
            .map(|(key, bytes)| {
                Ok(StoredEnvelope { room, bucket, key: EnvelopeKey::from_bytes(&key)?, bytes })
            })
            .collect()
    }
}

impl RelayStore for CqlRelayStore {
    fn backend(&self) -> &'static str {
        "cql"
    }

    async fn put_room(&self, genesis: &Genesis) -> StoreResult<Written> {
        let s = self.statements().await?;
        let room = genesis.room_id();
        let values = (room.as_bytes().as_slice(), genesis.as_bytes());
        let result = self.execute("put room", &s.put_room, values).await?;
        Ok(if applied("put room", result)? { Written::Inserted } else { Written::AlreadyPresent })
    }

    async fn rooms(&self) -> StoreResult<Vec<Genesis>> {
        let s = self.statements().await?;
        let rows: Vec<(Vec<u8>,)> = self.select("read rooms", &s.rooms, (), usize::MAX).await?;
        rows.iter()
            .map(|(genesis,)| {
                Genesis::from_bytes(genesis)
                    .map_err(|e| RelayStoreError::Corrupt(format!("room genesis: {e}")))
            })
            .collect()
    }

    async fn put_envelope(&self, envelope: &StoredEnvelope) -> StoreResult<Written> {
        let s = self.statements().await?;
        // The bucket entry first: see the module docs.
        self.put_bucket(s, envelope.room, envelope.bucket).await?;
        let values = (
            envelope.room.as_bytes().as_slice(),
            bucket_value(envelope.bucket),
            envelope.key.to_bytes(),
            envelope.bytes.as_slice(),
        );
        let result = self.execute("put envelope", &s.put_envelope, values).await?;
        Ok(if applied("put envelope", result)? {
            Written::Inserted
        } else {
            Written::AlreadyPresent
        })
    }

    /// See the module docs: bucket entries first, then the envelopes in
    /// unconditional single-partition batches.
    async fn put_envelopes(&self, batch: &[StoredEnvelope]) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let s = self.statements().await?;
        let buckets: BTreeSet<(RoomId, u32)> = batch.iter().map(|e| (e.room, e.bucket)).collect();
        futures::stream::iter(buckets)
            .map(|(room, bucket)| self.put_bucket(s, room, bucket))
            .buffer_unordered(Self::BATCH_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        // The futures are made here and run by the stream, at most
        // `BATCH_CONCURRENCY` at once.
        let writes: Vec<_> =
            plan_batches(batch).into_iter().map(|rows| self.write_batch(s, rows)).collect();
        futures::stream::iter(writes)
            .buffer_unordered(Self::BATCH_CONCURRENCY)
            .try_collect::<()>()
            .await
    }

    async fn buckets(&self, room: RoomId) -> StoreResult<Vec<u32>> {
        let s = self.statements().await?;
        let values = (room.as_bytes().as_slice(),);
        let rows: Vec<(i64,)> = self.select("read buckets", &s.buckets, values, usize::MAX).await?;
        rows.into_iter()
            .map(|(bucket,)| {
                u32::try_from(bucket).map_err(|_| RelayStoreError::Corrupt("bucket key".into()))
            })
            .collect()
    }

    async fn envelopes(
        &self,
        room: RoomId,
        bucket: u32,
        after: Option<EnvelopeKey>,
        limit: usize,
    ) -> StoreResult<Vec<StoredEnvelope>> {
        self.range(room, bucket, Bound::after(after), limit).await
    }

    async fn last_before(
        &self,
        room: RoomId,
        bucket: u32,
        before: EnvelopeKey,
        limit: usize,
    ) -> StoreResult<Vec<StoredEnvelope>> {
        self.range(room, bucket, Bound::Before(before), limit).await
    }
    /// See the chunk protocol (`relay/chunks.rs`).
    async fn put_blob(&self, room: RoomId, hash: BlobHash, blob: &[u8]) -> StoreResult<Written> {
        chunks::put(self, blob_id(room, hash), blob).await
    }

    async fn blob(&self, room: RoomId, hash: BlobHash) -> StoreResult<Option<Vec<u8>>> {
        chunks::get(self, blob_id(room, hash)).await
    }

    /// Deletes the manifest first, so readers stop seeing the blob at once,
    /// then every other chunk of the blob's partition with one range
    /// delete.
    async fn erase_blob(&self, room: RoomId, hash: BlobHash) -> StoreResult<bool> {
        chunks::erase(self, blob_id(room, hash)).await
    }

    async fn put_governance(
        &self,
        room: RoomId,
        head: GovHead,
        change: &[u8],
    ) -> StoreResult<Written> {
        check_gov_change_len(change)?;
        let s = self.statements().await?;
        let values = (room.as_bytes().as_slice(), head.as_slice(), change);
        let result = self.execute("put governance", &s.put_governance, values).await?;
        Ok(if applied("put governance", result)? {
            Written::Inserted
        } else {
            Written::AlreadyPresent
        })
    }

    async fn governance(&self, room: RoomId) -> StoreResult<Vec<Vec<u8>>> {
        let s = self.statements().await?;
        let values = (room.as_bytes().as_slice(),);
        let rows: Vec<(Vec<u8>,)> =
            self.select("read governance", &s.governance, values, usize::MAX).await?;
        Ok(rows.into_iter().map(|(change,)| change).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_keyspace_names_are_checked_before_they_reach_a_statement() {
        for good in ["concord", "relay_1", "a", &"k".repeat(48)] {
            assert!(valid_keyspace(good), "{good}");
        }
        for bad in ["", "Concord", "1relay", "_relay", "relay-1", "ks; DROP", "é", &"k".repeat(49)]
        {
            assert!(!valid_keyspace(bad), "{bad}");
        }
    }

    #[test]
    fn test_options_debug_leaves_the_password_out() {
        let options = CqlOptions::default().datacenter("dc1").credentials("relay", "hunter2");
        let shown = format!("{options:?}");
        assert!(shown.contains("dc1") && shown.contains("relay"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
