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
//! batch-size limits) of at most [`BATCH_ROWS`] rows and [`BATCH_BYTES`]
//! bytes, [`CqlRelayStore::BATCH_CONCURRENCY`] in flight. An unconditional
//! `INSERT` over an existing envelope row is safe: the sort key ends with
//! blake3 of the envelope's bytes, so it writes the identical row, and the
//! partition still holds the envelope exactly once. A later single put of
//! the same envelope sees the row (the batch was acknowledged by a quorum,
//! which the transaction's Paxos read overlaps) and reports
//! [`Written::AlreadyPresent`].
//!
//! Blobs are split into chunks of at most [`BLOB_CHUNK_BYTES`]: chunks 1..
//! are plain `INSERT`s, written first; chunk 0, the manifest, is the
//! conditional write and makes the blob visible. An erase deletes the
//! manifest with `DELETE ... IF EXISTS` (which says whether the blob was
//! held), then the other chunks with one range delete. No row is written
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

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use concord_core::{BlobHash, Genesis, GovHead, RoomId};
use futures::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{
    ConnectionError, ConnectionPoolError, ConnectionSetupRequestErrorKind, DbError, ExecutionError,
    MetadataError, NewSessionError, PrepareError, RequestAttemptError,
};
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::response::query_result::QueryResult;
use scylla::response::PagingState;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency, Statement};
use scylla::value::{CqlValue, Row};
use tokio::sync::OnceCell;

use super::retry::{Retrier, RetryPolicy};
use super::{
    check_blob_len, check_gov_change_len, EnvelopeKey, RelayStore, RelayStoreError, StoreResult,
    StoredEnvelope, Written, MAX_STORED_BLOB_BYTES,
};

/// The largest chunk of a blob in one row. Both servers advise cells well
/// under a megabyte (ScyllaDB logs cells over 1 MB as large); a quarter of
/// that keeps each write, and each Paxos round of a manifest, small. A
/// blob of [`MAX_STORED_BLOB_BYTES`] is five chunks.
pub(crate) const BLOB_CHUNK_BYTES: usize = 256 * 1024;

/// Blob chunks per page when a blob is read: one mebibyte a page, so a
/// blob is its manifest and then one or two pages.
const CHUNK_PAGE: i32 = 4;

/// Envelopes per page of a range read. An envelope is at most 60 KiB, so a
/// page is at most 7.5 MiB, under the 16 MiB frame Cassandra accepts by
/// default; a typical envelope is a few hundred bytes.
const ENVELOPE_PAGE: i32 = 128;

/// Rows per page of the small tables (bucket entries, room genesis records).
const ROW_PAGE: i32 = 1000;

/// Governance changes per page when a room's are read. A change is at most
/// 32 KiB (`MAX_GOV_CHANGE_BYTES`), so a page is at most 8 MiB, under the
/// 16 MiB frame Cassandra accepts by default; a typical change is a few
/// hundred bytes.
const GOV_CHANGE_PAGE: i32 = 256;

/// Envelope rows in one unlogged batch. A batch is one mutation of one
/// partition on each replica; 256 rows of a typical flight are tens of
/// kilobytes.
pub(crate) const BATCH_ROWS: usize = 256;

/// Envelope bytes in one unlogged batch (a single envelope larger than this
/// still goes alone). Single-partition batches are exempt from Cassandra's
/// batch-size failure threshold; 512 KiB also stays under ScyllaDB's 1 MiB
/// threshold and far under either server's largest mutation (half a
/// 32 MiB commitlog segment).
pub(crate) const BATCH_BYTES: usize = 512 * 1024;

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

/// The column a conditional statement's result reports its outcome in.
const APPLIED: &str = "[applied]";

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

/// Every statement the store runs, prepared once per store.
#[derive(Debug)]
struct Statements {
    put_room: PreparedStatement,
    rooms: PreparedStatement,
    put_bucket: PreparedStatement,
    buckets: PreparedStatement,
    put_envelope: PreparedStatement,
    overwrite_envelope: PreparedStatement,
    envelopes_from_start: PreparedStatement,
    envelopes_after: PreparedStatement,
    envelopes_before: PreparedStatement,
    put_chunk: PreparedStatement,
    put_manifest: PreparedStatement,
    manifest: PreparedStatement,
    chunks: PreparedStatement,
    erase_manifest: PreparedStatement,
    erase_chunks: PreparedStatement,
    put_governance: PreparedStatement,
    governance: PreparedStatement,
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

/// Whether a server error means "not now".
fn db_transient(error: &DbError) -> bool {
    matches!(
        error,
        DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::ReadFailure { .. }
            | DbError::WriteFailure { .. }
            | DbError::ServerError
            | DbError::TruncateError
            | DbError::RateLimitReached { .. }
    )
}

/// Whether one attempt's failure means "not now".
fn attempt_transient(error: &RequestAttemptError) -> bool {
    match error {
        RequestAttemptError::DbError(db, _) => db_transient(db),
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => true,
        // Serialization, a malformed answer, a prepared statement whose id
        // changed: retrying sends the same thing again.
        _ => false,
    }
}

fn connection_transient(error: &ConnectionError) -> bool {
    match error {
        ConnectionError::ConnectionSetupRequestError(setup) => match setup.get_error() {
            // Bad credentials are `AuthenticationError`: not transient.
            ConnectionSetupRequestErrorKind::DbError(db, _) => db_transient(db),
            ConnectionSetupRequestErrorKind::BrokenConnection(_)
            | ConnectionSetupRequestErrorKind::UnableToAllocStreamId => true,
            _ => false,
        },
        ConnectionError::TranslationError(_) | ConnectionError::UseKeyspaceError(_) => false,
        // A connect timeout, a refused or reset connection.
        _ => true,
    }
}

fn pool_transient(error: &ConnectionPoolError) -> bool {
    match error {
        ConnectionPoolError::Broken { last_connection_error } => {
            connection_transient(last_connection_error)
        }
        ConnectionPoolError::NodeDisabledByHostFilter => false,
        _ => true,
    }
}

/// Whether a failed statement may succeed if sent again.
fn execution_transient(error: &ExecutionError) -> bool {
    match error {
        ExecutionError::LastAttemptError(attempt) => attempt_transient(attempt),
        ExecutionError::ConnectionPoolError(pool) => pool_transient(pool),
        ExecutionError::PrepareError(prepare) => prepare_transient(prepare),
        ExecutionError::RequestTimeout(_)
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => true,
        // A statement the driver refused, or no node to send it to: the
        // load balancing plan is empty only for a datacenter with no nodes.
        ExecutionError::BadQuery(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::UseKeyspaceError(_) => false,
        _ => true,
    }
}

fn prepare_transient(error: &PrepareError) -> bool {
    match error {
        PrepareError::ConnectionPoolError(pool) => pool_transient(pool),
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_transient(first_attempt),
        // Nodes disagreed on a statement's id: the schema is changing.
        _ => true,
    }
}

fn session_transient(error: &NewSessionError) -> bool {
    match error {
        NewSessionError::MetadataError(MetadataError::ConnectionPoolError(pool)) => {
            pool_transient(pool)
        }
        NewSessionError::EmptyKnownNodesList
        | NewSessionError::UseKeyspaceError(_)
        | NewSessionError::IllegalConfig(_) => false,
        // Names that did not resolve, metadata that could not be read.
        _ => true,
    }
}

fn classify(transient: bool, detail: String) -> RelayStoreError {
    if transient {
        RelayStoreError::Unavailable(detail)
    } else {
        RelayStoreError::Setup(detail)
    }
}

/// Maps a driver error: transient failures to `Unavailable`, everything
/// else to `Setup`.
fn execution_error(what: &str, error: &ExecutionError) -> RelayStoreError {
    classify(execution_transient(error), format!("{what}: {error}"))
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> RelayStoreError {
    RelayStoreError::Corrupt(format!("{what}: {error}"))
}

/// The outcome of a conditional statement: its `[applied]` column. ScyllaDB
/// answers with `[applied]` and the row's old values, Cassandra with
/// `[applied]` alone when applied; the column is found by name either way.
fn applied(what: &str, result: QueryResult) -> StoreResult<bool> {
    let rows = result.into_rows_result().map_err(|e| corrupt(what, e))?;
    let (index, _) = rows
        .column_specs()
        .get_by_name(APPLIED)
        .ok_or_else(|| corrupt(what, "no [applied] column in a conditional result"))?;
    let row: Row = rows.first_row().map_err(|e| corrupt(what, e))?;
    match row.columns.get(index) {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(corrupt(what, format!("[applied] is {other:?}"))),
    }
}

fn bucket_value(bucket: u32) -> i64 {
    i64::from(bucket)
}

/// The envelope rows of a batch, without repeats, grouped into unlogged
/// batches that each stay inside one partition, hold at most
/// [`BATCH_ROWS`] rows and, unless one envelope alone is larger, at most
/// [`BATCH_BYTES`] of envelope bytes. Partitions in order, rows in sort
/// order.
pub(crate) fn plan_batches(batch: &[StoredEnvelope]) -> Vec<Vec<&StoredEnvelope>> {
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

/// Which side of a sort key a range read starts from.
#[derive(Clone, Copy)]
enum Bound {
    Start,
    After(EnvelopeKey),
    Before(EnvelopeKey),
}

impl CqlRelayStore {
    /// Unlogged batches one [`RelayStore::put_envelopes`] keeps in flight,
    /// and bucket entries it writes at once. A flight of a mebibyte is a
    /// few batches per bucket; eight overlap their round trips without
    /// letting one sync session's flight take every connection from the
    /// relay's other sessions.
    pub const BATCH_CONCURRENCY: usize = 8;

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

    /// The prepared statements, prepared now if this is the first use.
    async fn statements(&self) -> StoreResult<&Statements> {
        self.statements.get_or_try_init(|| self.prepare_all()).await
    }

    async fn prepare_all(&self) -> StoreResult<Statements> {
        let ks = &self.keyspace;
        let envelopes =
            format!("SELECT key, envelope FROM {ks}.envelopes WHERE room = ? AND bucket = ?");
        let (put_room, rooms, put_bucket, buckets, put_envelope) = futures::try_join!(
            self.prepare(
                format!("INSERT INTO {ks}.rooms (room, genesis) VALUES (?, ?) IF NOT EXISTS"),
                None
            ),
            self.prepare(format!("SELECT genesis FROM {ks}.rooms"), Some(ROW_PAGE)),
            self.prepare(format!("INSERT INTO {ks}.buckets (room, bucket) VALUES (?, ?)"), None),
            self.prepare(format!("SELECT bucket FROM {ks}.buckets WHERE room = ?"), Some(ROW_PAGE)),
            self.prepare(
                format!(
                    "INSERT INTO {ks}.envelopes (room, bucket, key, envelope) \
                     VALUES (?, ?, ?, ?) IF NOT EXISTS"
                ),
                None
            ),
        )?;
        let (overwrite_envelope, envelopes_from_start, envelopes_after, envelopes_before) = futures::try_join!(
            self.prepare(
                format!(
                    "INSERT INTO {ks}.envelopes (room, bucket, key, envelope) VALUES (?, ?, ?, ?)"
                ),
                None
            ),
            self.prepare(format!("{envelopes} LIMIT ?"), Some(ENVELOPE_PAGE)),
            self.prepare(format!("{envelopes} AND key > ? LIMIT ?"), Some(ENVELOPE_PAGE)),
            self.prepare(
                format!("{envelopes} AND key < ? ORDER BY key DESC LIMIT ?"),
                Some(ENVELOPE_PAGE)
            ),
        )?;
        let (put_chunk, put_manifest, manifest, chunks, erase_manifest, erase_chunks) = futures::try_join!(
            self.prepare(
                format!("INSERT INTO {ks}.blobs (room, hash, chunk, data) VALUES (?, ?, ?, ?)"),
                None
            ),
            self.prepare(
                format!(
                    "INSERT INTO {ks}.blobs (room, hash, chunk, data, chunks, len) \
                     VALUES (?, ?, 0, ?, ?, ?) IF NOT EXISTS"
                ),
                None
            ),
            self.prepare(
                format!(
                    "SELECT data, chunks, len FROM {ks}.blobs \
                     WHERE room = ? AND hash = ? AND chunk = 0"
                ),
                None
            ),
            self.prepare(
                format!(
                    "SELECT chunk, data FROM {ks}.blobs WHERE room = ? AND hash = ? AND chunk > 0"
                ),
                Some(CHUNK_PAGE)
            ),
            self.prepare(
                format!(
                    "DELETE FROM {ks}.blobs WHERE room = ? AND hash = ? AND chunk = 0 IF EXISTS"
                ),
                None
            ),
            self.prepare(
                format!("DELETE FROM {ks}.blobs WHERE room = ? AND hash = ? AND chunk > 0"),
                None
            ),
        )?;
        let (put_governance, governance) = futures::try_join!(
            self.prepare(
                format!(
                    "INSERT INTO {ks}.governance (room, head, change) VALUES (?, ?, ?) \
                     IF NOT EXISTS"
                ),
                None
            ),
            self.prepare(
                format!("SELECT change FROM {ks}.governance WHERE room = ?"),
                Some(GOV_CHANGE_PAGE)
            ),
        )?;
        Ok(Statements {
            put_room,
            rooms,
            put_bucket,
            buckets,
            put_envelope,
            overwrite_envelope,
            envelopes_from_start,
            envelopes_after,
            envelopes_before,
            put_chunk,
            put_manifest,
            manifest,
            chunks,
            erase_manifest,
            erase_chunks,
            put_governance,
            governance,
        })
    }

    async fn prepare(&self, text: String, page: Option<i32>) -> StoreResult<PreparedStatement> {
        let mut prepared = self
            .retry
            .run("prepare", || {
                let text = text.clone();
                async move {
                    self.session.prepare(text).await.map_err(|e| {
                        classify(prepare_transient(&e), format!("prepare statement: {e}"))
                    })
                }
            })
            .await?;
        if let Some(page) = page {
            prepared.set_page_size(page);
        }
        Ok(prepared)
    }

    /// Executes a statement that returns no rows, or a conditional one
    /// whose outcome the caller reads with [`applied`].
    async fn execute(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow + Sync,
    ) -> StoreResult<QueryResult> {
        self.retry
            .run(what, || async {
                self.session
                    .execute_unpaged(statement, &values)
                    .await
                    .map_err(|e| execution_error(what, &e))
            })
            .await
    }

    /// Up to `limit` rows of a `SELECT`, page by page (each page retried on
    /// its own), decoded as `R`.
    async fn select<R>(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow + Sync,
        limit: usize,
    ) -> StoreResult<Vec<R>>
    where
        R: for<'frame> DeserializeRow<'frame, 'frame> + Send,
    {
        let mut out = Vec::new();
        let mut paging = PagingState::start();
        while out.len() < limit {
            let (result, next) = self
                .retry
                .run(what, || {
                    let paging = paging.clone();
                    let values = &values;
                    async move {
                        self.session
                            .execute_single_page(statement, values, paging)
                            .await
                            .map_err(|e| execution_error(what, &e))
                    }
                })
                .await?;
            let rows = result.into_rows_result().map_err(|e| corrupt(what, e))?;
            // A type mismatch means the table is not the one this store
            // creates.
            let typed =
                rows.rows::<R>().map_err(|e| RelayStoreError::Setup(format!("{what}: {e}")))?;
            for row in typed {
                out.push(row.map_err(|e| corrupt(what, e))?);
            }
            match next.into_paging_control_flow() {
                ControlFlow::Continue(state) => paging = state,
                ControlFlow::Break(()) => break,
            }
        }
        out.truncate(limit);
        Ok(out)
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

    /// One unlogged batch of envelope rows of one partition, written
    /// without conditions: see the module docs.
    async fn write_batch(
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

    /// Chunk 0 of a blob: its first bytes, its chunk count and its length.
    async fn manifest(
        &self,
        statements: &Statements,
        room: &RoomId,
        hash: &BlobHash,
    ) -> StoreResult<Option<(Vec<u8>, i32, i32)>> {
        let values = (room.as_bytes().as_slice(), hash.as_bytes().as_slice());
        let rows = self.select("read blob", &statements.manifest, values, 1).await?;
        Ok(rows.into_iter().next())
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
        let from = after.map_or(Bound::Start, Bound::After);
        self.range(room, bucket, from, limit).await
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

    /// Chunks 1.. first, unconditionally (a retry rewrites the same bytes);
    /// chunk 0, the manifest, last and conditionally, carrying the chunk
    /// count and the blob's length. A reader looks for the manifest first,
    /// so it never sees a blob whose chunks are not all written: a crash
    /// mid-put leaves only chunks no manifest names, which the next put of
    /// the blob overwrites and an erase removes.
    async fn put_blob(&self, room: RoomId, hash: BlobHash, blob: &[u8]) -> StoreResult<Written> {
        check_blob_len(blob)?;
        let s = self.statements().await?;
        let room_bytes = room.as_bytes().as_slice();
        let hash_bytes = hash.as_bytes().as_slice();
        let chunks: Vec<&[u8]> =
            if blob.is_empty() { vec![blob] } else { blob.chunks(BLOB_CHUNK_BYTES).collect() };
        // At most five chunks and 1 MiB + 64 bytes, so these fit an `int`.
        let count = i32::try_from(chunks.len()).map_err(|_| corrupt("put blob", "chunk count"))?;
        let len = i32::try_from(blob.len()).map_err(|_| corrupt("put blob", "blob length"))?;
        if chunks.len() > 1 {
            // Spare rewriting a mebibyte when the blob is already held.
            if self.manifest(s, &room, &hash).await?.is_some() {
                return Ok(Written::AlreadyPresent);
            }
            for (index, chunk) in (1i32..).zip(chunks.iter().skip(1)) {
                let values = (room_bytes, hash_bytes, index, *chunk);
                self.execute("put blob chunk", &s.put_chunk, values).await?;
            }
        }
        let values = (room_bytes, hash_bytes, chunks[0], count, len);
        let result = self.execute("put blob", &s.put_manifest, values).await?;
        Ok(if applied("put blob", result)? { Written::Inserted } else { Written::AlreadyPresent })
    }

    async fn blob(&self, room: RoomId, hash: BlobHash) -> StoreResult<Option<Vec<u8>>> {
        let s = self.statements().await?;
        let Some((first, count, len)) = self.manifest(s, &room, &hash).await? else {
            return Ok(None);
        };
        let (Ok(count), Ok(len)) = (usize::try_from(count), usize::try_from(len)) else {
            return Err(RelayStoreError::Corrupt("blob manifest".into()));
        };
        if count == 0 || len > MAX_STORED_BLOB_BYTES {
            return Err(RelayStoreError::Corrupt("blob manifest".into()));
        }
        let mut blob = Vec::with_capacity(len);
        blob.extend_from_slice(&first);
        if count > 1 {
            let values = (room.as_bytes().as_slice(), hash.as_bytes().as_slice());
            let rest: Vec<(i32, Vec<u8>)> =
                self.select("read blob chunks", &s.chunks, values, count - 1).await?;
            let in_order = rest.iter().zip(1i32..).all(|((index, _), want)| *index == want);
            if rest.len() != count - 1 || !in_order {
                if self.manifest(s, &room, &hash).await?.is_none() {
                    // Erased between the two reads.
                    return Ok(None);
                }
                return Err(RelayStoreError::Corrupt(format!(
                    "blob of {count} chunks, {} found after its manifest",
                    rest.len()
                )));
            }
            for (_, data) in &rest {
                blob.extend_from_slice(data);
            }
        }
        if blob.len() != len {
            return Err(RelayStoreError::Corrupt(format!(
                "blob of {} bytes, its manifest says {len}",
                blob.len()
            )));
        }
        Ok(Some(blob))
    }

    /// Deletes the manifest first, so readers stop seeing the blob at once,
    /// then every other chunk of the blob's partition with one range
    /// delete, whether or not a manifest named it: an erase that was cut
    /// short, or a put that crashed before its manifest, is cleaned up by
    /// the next erase.
    async fn erase_blob(&self, room: RoomId, hash: BlobHash) -> StoreResult<bool> {
        let s = self.statements().await?;
        let values = (room.as_bytes().as_slice(), hash.as_bytes().as_slice());
        let result = self.execute("erase blob", &s.erase_manifest, values).await?;
        let held = applied("erase blob", result)?;
        self.execute("erase blob chunks", &s.erase_chunks, values).await?;
        Ok(held)
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
    use std::time::Duration;

    use concord_core::{AuthorId, Hlc};
    use scylla::errors::{BadQuery, BrokenConnectionError, BrokenConnectionErrorKind};
    use scylla::serialize::SerializationError;

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

    fn db(error: DbError) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(error, "message".into()))
    }

    #[test]
    fn test_transient_server_answers_are_unavailable_and_schema_errors_are_setup() {
        let transient = [
            db(DbError::Unavailable { consistency: Consistency::Quorum, required: 2, alive: 1 }),
            db(DbError::Overloaded),
            db(DbError::IsBootstrapping),
            db(DbError::ReadTimeout {
                consistency: Consistency::Quorum,
                received: 1,
                required: 2,
                data_present: false,
            }),
            db(DbError::WriteTimeout {
                consistency: Consistency::Quorum,
                received: 1,
                required: 2,
                write_type: scylla::errors::WriteType::Cas,
            }),
            db(DbError::ServerError),
            ExecutionError::RequestTimeout(Duration::from_secs(10)),
            ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(
                BrokenConnectionError::from(BrokenConnectionErrorKind::WriteError(
                    std::io::Error::from(std::io::ErrorKind::ConnectionReset),
                )),
            )),
            ExecutionError::ConnectionPoolError(ConnectionPoolError::Broken {
                last_connection_error: ConnectionError::ConnectTimeout,
            }),
            ExecutionError::ConnectionPoolError(ConnectionPoolError::Initializing),
        ];
        for error in &transient {
            let mapped = execution_error("test", error);
            assert!(matches!(mapped, RelayStoreError::Unavailable(_)), "{error}: {mapped:?}");
            assert!(mapped.is_retryable());
        }
        let missing = RequestAttemptError::DbError(DbError::Invalid, "unconfigured table".into());
        let setup = [
            db(DbError::Invalid),
            db(DbError::SyntaxError),
            db(DbError::Unauthorized),
            db(DbError::AuthenticationError),
            ExecutionError::PrepareError(PrepareError::AllAttemptsFailed {
                first_attempt: missing,
            }),
            ExecutionError::BadQuery(BadQuery::SerializationError(SerializationError::new(
                std::fmt::Error,
            ))),
            ExecutionError::EmptyPlan,
        ];
        for error in &setup {
            let mapped = execution_error("test", error);
            assert!(matches!(mapped, RelayStoreError::Setup(_)), "{error}: {mapped:?}");
            assert!(!mapped.is_retryable());
        }
    }

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

    #[test]
    fn test_options_debug_leaves_the_password_out() {
        let options = CqlOptions::default().datacenter("dc1").credentials("relay", "hunter2");
        let shown = format!("{options:?}");
        assert!(shown.contains("dc1") && shown.contains("relay"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
