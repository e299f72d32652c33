//! The relay store on the DynamoDB API: AWS DynamoDB in production, ScyllaDB
//! Alternator where a relay runs on its own cluster, DynamoDB Local in tests.
//!
//! # Tables
//!
//! Five tables, each named `<prefix><table>`, all on on-demand billing
//! (`PAY_PER_REQUEST`). Keys are binary and big-endian, so DynamoDB's byte
//! order is the sort order:
//!
//! | table        | partition key `p` (B) | sort key `s`                  | attributes |
//! |--------------|-----------------------|-------------------------------|------------|
//! | `envelopes`  | room ‖ bucket (u32)   | B: hlc ‖ author ‖ envelope id | `e`: the signed envelope |
//! | `buckets`    | room                  | B: bucket (u32)               | none |
//! | `blobs`      | room ‖ blob hash      | N: chunk index                | `d`: chunk bytes; on chunk 0 also `n` (chunk count) and `len` (blob length) |
//!
//! Blobs are split into chunks of at most
//! [`DynamoRelayStore::BLOB_CHUNK_BYTES`] by the protocol every wide-column
//! backend shares (`relay/chunks.rs`): chunk 0, the manifest, is written
//! last and conditionally, so a blob is visible only once whole.
//! | `rooms`      | room                  | none                          | `g`: the signed genesis |
//! | `governance` | room                  | B: governance head (32 B)     | `c`: the signed governance change |
//!
//! # Writes
//!
//! An envelope, room, governance change or blob is written with `PutItem`
//! conditional on `attribute_not_exists(p)`; a
//! `ConditionalCheckFailedException` is [`Written::AlreadyPresent`]. An
//! envelope's bucket entry is written first (unconditionally: it is the
//! same item every time), then the envelope, so a crash between the two
//! leaves at worst an empty bucket listed, never an envelope its bucket
//! listing misses.
//!
//! A batch of envelopes ([`RelayStore::put_envelopes`], one sync flight) is
//! written with `BatchWriteItem`, which takes at most 25 puts and cannot be
//! conditional. For envelope rows that is safe: the sort key ends with
//! blake3 of the envelope's bytes, so a put over an existing row writes the
//! identical item, and the table still holds exactly one row for the
//! envelope. The batch's distinct bucket entries are written first, as for
//! a single envelope; then its envelopes, without repeats (one request may
//! not name a key twice), in chunks of 25 with
//! [`DynamoRelayStore::BATCH_CONCURRENCY`] chunks in flight. Items a
//! response leaves in `UnprocessedItems` (DynamoDB's partial throttling)
//! are sent again after the [`RetryPolicy`] backoff, like a failed call;
//! the tries count only calls in a row that wrote nothing, so a chunk that
//! keeps progressing is not given up. Single envelopes (`put_envelope`),
//! rooms, governance changes and blob manifests stay conditional
//! `PutItem`s, which is what lets them report [`Written::AlreadyPresent`].
//!
//! Throttling, 5xx answers, timeouts and connection failures are
//! [`RelayStoreError::Unavailable`] and are retried here with bounded,
//! jittered exponential backoff ([`RetryPolicy`]); the SDK's own retries are
//! off so that there is one retry loop to reason about. A write whose answer
//! was lost and that is then retried finds its own item and reports
//! [`Written::AlreadyPresent`]: the item is there exactly once either way.
//!
//! Every read is strongly consistent (`ConsistentRead`), so a relay reads its
//! own acknowledged writes.
//!
//! # Files
//!
//! This file has the store, its setup and the [`RelayStore`] calls;
//! `requests.rs` the DynamoDB requests they are made of (items, retries,
//! batches, paged queries); `blobs.rs` the blob rows the chunk protocol
//! runs on.

mod blobs;
mod requests;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::ScalarAttributeType;
use aws_sdk_dynamodb::Client;
use concord_core::{BlobHash, Genesis, GovHead, RoomId};

use self::blobs::blob_id;
use self::requests::{binary, bucket_item, envelope_item, get_binary, sdk_error, Item};
use super::retry::{Retrier, RetryPolicy};
use super::{
    check_gov_change_len, chunks, Bound, EnvelopeKey, RelayStore, RelayStoreError, StoreResult,
    StoredEnvelope, Written,
};

/// Table name suffixes; the prefix is the caller's.
const ENVELOPES: &str = "envelopes";
const BUCKETS: &str = "buckets";
const BLOBS: &str = "blobs";
const ROOMS: &str = "rooms";
const GOVERNANCE: &str = "governance";

/// Attribute names: one letter each, because every item carries them and
/// DynamoDB bills attribute names as item bytes.
const PK: &str = "p";
const SK: &str = "s";
const ENVELOPE: &str = "e";
const GENESIS: &str = "g";
const CHANGE: &str = "c";
const DATA: &str = "d";
const CHUNKS: &str = "n";
const LEN: &str = "len";

/// The condition of every idempotent write.
const IF_ABSENT: &str = "attribute_not_exists(p)";
/// The error code of a failed condition.
const CONDITION_FAILED: &str = "ConditionalCheckFailedException";

/// Error codes that mean "not now": retried, then reported as
/// [`RelayStoreError::Unavailable`]. Any 5xx answer is treated the same.
const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionConflictException",
    "LimitExceededException",
];

/// Puts in one `BatchWriteItem`: DynamoDB's limit. 25 envelopes of at most
/// `MAX_ENVELOPE_BYTES` (60 KiB) stay far below its 16 MB per request.
const BATCH_ITEMS: usize = 25;

/// Rows asked for per `Query` page; DynamoDB also stops a page at 1 MB.
const QUERY_PAGE: usize = 1000;

/// How long [`DynamoRelayStore::create_tables`] waits for a new table to
/// become active. AWS usually takes seconds; DynamoDB Local none.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Per-attempt timeouts. An attempt carries at most one 350 KB chunk, so
/// ten seconds is generous; a connection that takes three seconds to open
/// is better retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay store on the DynamoDB API. Cloning shares the client.
#[derive(Clone, Debug)]
pub struct DynamoRelayStore {
    client: Client,
    envelopes: String,
    buckets: String,
    blobs: String,
    rooms: String,
    governance: String,
    retry: Retrier,
}

impl DynamoRelayStore {
    /// `BatchWriteItem` calls one [`RelayStore::put_envelopes`] keeps in
    /// flight. A flight of a mebibyte is about 3,500 envelopes, 140 calls;
    /// one at a time, each would wait out a full round trip. Eight overlap
    /// the round trips and still bound what one flight asks of the table at
    /// once (200 items), so that one busy sync session does not crowd out
    /// the relay's others.
    pub const BATCH_CONCURRENCY: usize = 8;

    /// The largest chunk of a blob in one item. DynamoDB caps an item at
    /// 400 KB including attribute names and key values; 350,000 bytes of
    /// data leaves ample room for the 64-byte partition key and the
    /// manifest numbers. At three chunks, the largest blob
    /// ([`MAX_STORED_BLOB_BYTES`](super::MAX_STORED_BLOB_BYTES)) is one
    /// `GetItem` and one `Query`.
    pub const BLOB_CHUNK_BYTES: usize = 350_000;

    /// Connects to DynamoDB in `region`, or to the DynamoDB-API server at
    /// `endpoint` (DynamoDB Local, ScyllaDB Alternator). Tables are named
    /// `<table_prefix>envelopes` and so on; create them once with
    /// [`DynamoRelayStore::create_tables`].
    ///
    /// Without an endpoint, credentials come from the usual AWS chain
    /// (environment, profile, container or instance role). With one, the
    /// client signs with fixed placeholder credentials, which DynamoDB
    /// Local and an Alternator without authorization accept.
    pub async fn connect(
        endpoint: Option<&str>,
        table_prefix: &str,
        region: &str,
    ) -> StoreResult<Self> {
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if !table_prefix.chars().all(valid) {
            return Err(RelayStoreError::Setup(format!(
                "table prefix {table_prefix:?} has characters a table name cannot"
            )));
        }
        let region = Region::new(region.to_owned());
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .build();
        let config = match endpoint {
            Some(endpoint) => aws_sdk_dynamodb::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(region)
                .endpoint_url(endpoint)
                .credentials_provider(Credentials::new(
                    "concord",
                    "concord",
                    None,
                    None,
                    "concord-static",
                ))
                .retry_config(RetryConfig::disabled())
                .timeout_config(timeouts)
                .build(),
            None => {
                let shared =
                    aws_config::defaults(BehaviorVersion::latest()).region(region).load().await;
                aws_sdk_dynamodb::config::Builder::from(&shared)
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(timeouts)
                    .build()
            }
        };
        Ok(Self {
            client: Client::from_conf(config),
            envelopes: format!("{table_prefix}{ENVELOPES}"),
            buckets: format!("{table_prefix}{BUCKETS}"),
            blobs: format!("{table_prefix}{BLOBS}"),
            rooms: format!("{table_prefix}{ROOMS}"),
            governance: format!("{table_prefix}{GOVERNANCE}"),
            retry: Retrier::new("dynamodb"),
        })
    }

    /// The same store with another retry policy.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry.set_policy(policy);
        self
    }

    /// Creates the five tables if absent and waits until they are active.
    /// Idempotent: tables that exist are left as they are.
    pub async fn create_tables(&self) -> StoreResult<()> {
        use ScalarAttributeType::{B, N};
        let tables = [
            (&self.envelopes, Some(B)),
            (&self.buckets, Some(B)),
            (&self.blobs, Some(N)),
            (&self.rooms, None),
            (&self.governance, Some(B)),
        ];
        for (name, sort) in &tables {
            self.create_table(name, sort.clone()).await?;
        }
        for (name, _) in &tables {
            self.wait_active(name).await?;
        }
        Ok(())
    }
}

impl RelayStore for DynamoRelayStore {
    fn backend(&self) -> &'static str {
        "dynamodb"
    }

    async fn put_room(&self, genesis: &Genesis) -> StoreResult<Written> {
        let item = HashMap::from([
            (PK.to_owned(), binary(genesis.room_id().as_bytes().as_slice())),
            (GENESIS.to_owned(), binary(genesis.as_bytes())),
        ]);
        self.put_new(&self.rooms, item).await
    }

    async fn rooms(&self) -> StoreResult<Vec<Genesis>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let response = self
                .retry
                .run("scan rooms", || {
                    let request = self
                        .client
                        .scan()
                        .table_name(&self.rooms)
                        .consistent_read(true)
                        .set_exclusive_start_key(start.clone());
                    async move { request.send().await.map_err(|e| sdk_error("scan rooms", &e)) }
                })
                .await?;
            for item in response.items() {
                out.push(
                    Genesis::from_bytes(get_binary(item, GENESIS)?)
                        .map_err(|e| RelayStoreError::Corrupt(format!("room genesis: {e}")))?,
                );
            }
            match response.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(out),
            }
        }
    }

    async fn put_envelope(&self, envelope: &StoredEnvelope) -> StoreResult<Written> {
        // The bucket entry first: see the module docs.
        self.put(&self.buckets, bucket_item(&envelope.room, envelope.bucket)).await?;
        self.put_new(&self.envelopes, envelope_item(envelope)).await
    }

    /// See the module docs: bucket entries first, then the envelopes in
    /// unconditional `BatchWriteItem`s.
    async fn put_envelopes(&self, batch: &[StoredEnvelope]) -> StoreResult<()> {
        let buckets: BTreeSet<(RoomId, u32)> = batch.iter().map(|e| (e.room, e.bucket)).collect();
        let buckets = buckets.iter().map(|(room, bucket)| bucket_item(room, *bucket)).collect();
        self.batch_put(&self.buckets, buckets).await?;
        let mut seen = HashSet::with_capacity(batch.len());
        let items = batch
            .iter()
            .filter(|e| seen.insert((e.room, e.bucket, e.key)))
            .map(envelope_item)
            .collect();
        self.batch_put(&self.envelopes, items).await
    }

    async fn buckets(&self, room: RoomId) -> StoreResult<Vec<u32>> {
        let items =
            self.query(&self.buckets, room.as_bytes().to_vec(), None, true, usize::MAX).await?;
        items
            .iter()
            .map(|item| {
                let raw: [u8; 4] = get_binary(item, SK)?
                    .try_into()
                    .map_err(|_| RelayStoreError::Corrupt("bucket key".into()))?;
                Ok(u32::from_be_bytes(raw))
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
    /// then every other chunk of the blob's partition, one `DeleteItem`
    /// each.
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
        let item = HashMap::from([
            (PK.to_owned(), binary(room.as_bytes().as_slice())),
            (SK.to_owned(), binary(head.as_slice())),
            (CHANGE.to_owned(), binary(change)),
        ]);
        self.put_new(&self.governance, item).await
    }

    /// One `Query` of the room's partition, followed across pages.
    async fn governance(&self, room: RoomId) -> StoreResult<Vec<Vec<u8>>> {
        let items =
            self.query(&self.governance, room.as_bytes().to_vec(), None, true, usize::MAX).await?;
        items.iter().map(|item| Ok(get_binary(item, CHANGE)?.to_vec())).collect()
    }
}
