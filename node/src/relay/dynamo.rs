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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ReturnValue, ScalarAttributeType, TableStatus, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use concord_core::{BlobHash, Genesis, GovHead, RoomId};
use futures::{StreamExt, TryStreamExt};

use super::retry::{Retrier, RetryPolicy};
use super::{
    check_blob_len, check_gov_change_len, EnvelopeKey, RelayStore, RelayStoreError, StoreResult,
    StoredEnvelope, Written, MAX_STORED_BLOB_BYTES,
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

/// The largest chunk of a blob in one item. DynamoDB caps an item at
/// 400 KB including attribute names and key values; 350,000 bytes of data
/// leaves ample room for the 64-byte partition key and the manifest numbers.
const BLOB_CHUNK_BYTES: usize = 350_000;

// At three chunks, the largest blob (`MAX_STORED_BLOB_BYTES`) is at most
// one `GetItem` and one `Query`.

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

/// An item: attribute name to value.
type Item = HashMap<String, AttributeValue>;

fn binary(bytes: impl Into<Vec<u8>>) -> AttributeValue {
    AttributeValue::B(Blob::new(bytes))
}

fn number(n: usize) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

fn partition(room: &RoomId, bucket: u32) -> Vec<u8> {
    [room.as_bytes().as_slice(), &bucket.to_be_bytes()].concat()
}

fn blob_partition(room: &RoomId, hash: &BlobHash) -> Vec<u8> {
    [room.as_bytes().as_slice(), hash.as_bytes()].concat()
}

/// A room's entry for one bucket in the `buckets` table.
fn bucket_item(room: &RoomId, bucket: u32) -> Item {
    HashMap::from([
        (PK.to_owned(), binary(room.as_bytes().as_slice())),
        (SK.to_owned(), binary(bucket.to_be_bytes())),
    ])
}

/// An envelope's row in the `envelopes` table.
fn envelope_item(envelope: &StoredEnvelope) -> Item {
    HashMap::from([
        (PK.to_owned(), binary(partition(&envelope.room, envelope.bucket))),
        (SK.to_owned(), binary(envelope.key.to_bytes())),
        (ENVELOPE.to_owned(), binary(envelope.bytes.as_slice())),
    ])
}

fn get_binary<'a>(item: &'a Item, name: &str) -> StoreResult<&'a [u8]> {
    match item.get(name) {
        Some(AttributeValue::B(b)) => Ok(b.as_ref()),
        _ => Err(RelayStoreError::Corrupt(format!("missing binary attribute {name}"))),
    }
}

fn get_number(item: &Item, name: &str) -> StoreResult<usize> {
    match item.get(name) {
        Some(AttributeValue::N(n)) => n
            .parse()
            .map_err(|_| RelayStoreError::Corrupt(format!("attribute {name} is not a count"))),
        _ => Err(RelayStoreError::Corrupt(format!("missing number attribute {name}"))),
    }
}

/// Maps an SDK error: transient failures to `Unavailable`, everything
/// else (a missing table, bad credentials, a rejected request) to `Setup`.
fn sdk_error<E>(what: &str, err: &SdkError<E, HttpResponse>) -> RelayStoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = format!("{what}: {}", DisplayErrorContext(err));
    let transient = match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(ctx) => {
            ctx.raw().status().is_server_error()
                || ctx.err().code().is_some_and(|code| RETRYABLE_CODES.contains(&code))
        }
        SdkError::ConstructionFailure(_) => false,
        _ => true,
    };
    if transient {
        RelayStoreError::Unavailable(detail)
    } else {
        RelayStoreError::Setup(detail)
    }
}

/// Which side of a sort key a range read starts from.
#[derive(Clone, Copy)]
enum Bound {
    Start,
    After(EnvelopeKey),
    Before(EnvelopeKey),
}

impl DynamoRelayStore {
    /// `BatchWriteItem` calls one [`RelayStore::put_envelopes`] keeps in
    /// flight. A flight of a mebibyte is about 3,500 envelopes, 140 calls;
    /// one at a time, each would wait out a full round trip. Eight overlap
    /// the round trips and still bound what one flight asks of the table at
    /// once (200 items), so that one busy sync session does not crowd out
    /// the relay's others.
    pub const BATCH_CONCURRENCY: usize = 8;

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

    async fn create_table(&self, name: &str, sort: Option<ScalarAttributeType>) -> StoreResult<()> {
        let setup = |e: aws_sdk_dynamodb::error::BuildError| RelayStoreError::Setup(e.to_string());
        let mut keys = vec![KeySchemaElement::builder()
            .attribute_name(PK)
            .key_type(KeyType::Hash)
            .build()
            .map_err(setup)?];
        let mut attributes = vec![AttributeDefinition::builder()
            .attribute_name(PK)
            .attribute_type(ScalarAttributeType::B)
            .build()
            .map_err(setup)?];
        if let Some(sort) = sort {
            keys.push(
                KeySchemaElement::builder()
                    .attribute_name(SK)
                    .key_type(KeyType::Range)
                    .build()
                    .map_err(setup)?,
            );
            attributes.push(
                AttributeDefinition::builder()
                    .attribute_name(SK)
                    .attribute_type(sort)
                    .build()
                    .map_err(setup)?,
            );
        }
        self.retry
            .run("create table", || {
                let request = self
                    .client
                    .create_table()
                    .table_name(name)
                    .set_key_schema(Some(keys.clone()))
                    .set_attribute_definitions(Some(attributes.clone()))
                    .billing_mode(BillingMode::PayPerRequest);
                async move {
                    match request.send().await {
                        Ok(_) => Ok(()),
                        Err(e) if e.code() == Some("ResourceInUseException") => Ok(()),
                        Err(e) => Err(sdk_error("create table", &e)),
                    }
                }
            })
            .await
    }

    async fn wait_active(&self, name: &str) -> StoreResult<()> {
        let deadline = Instant::now() + TABLE_ACTIVE_TIMEOUT;
        loop {
            let described = self
                .retry
                .run("describe table", || {
                    let request = self.client.describe_table().table_name(name);
                    async move { request.send().await.map_err(|e| sdk_error("describe table", &e)) }
                })
                .await?;
            let status = described.table().and_then(|t| t.table_status());
            if status == Some(&TableStatus::Active) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(RelayStoreError::Setup(format!(
                    "table {name} not active after {TABLE_ACTIVE_TIMEOUT:?} ({status:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `PutItem` if absent.
    async fn put_new(&self, table: &str, item: Item) -> StoreResult<Written> {
        self.retry
            .run("put item", || {
                let request = self
                    .client
                    .put_item()
                    .table_name(table)
                    .set_item(Some(item.clone()))
                    .condition_expression(IF_ABSENT);
                async move {
                    match request.send().await {
                        Ok(_) => Ok(Written::Inserted),
                        Err(e) if e.code() == Some(CONDITION_FAILED) => Ok(Written::AlreadyPresent),
                        Err(e) => Err(sdk_error("put item", &e)),
                    }
                }
            })
            .await
    }

    /// `PutItem`, unconditionally: for items that are the same every time.
    async fn put(&self, table: &str, item: Item) -> StoreResult<()> {
        self.retry
            .run("put item", || {
                let request = self.client.put_item().table_name(table).set_item(Some(item.clone()));
                async move { request.send().await.map(drop).map_err(|e| sdk_error("put item", &e)) }
            })
            .await
    }

    /// Puts `items` into `table` with `BatchWriteItem`, unconditionally,
    /// [`BATCH_ITEMS`] per call and [`Self::BATCH_CONCURRENCY`] calls in
    /// flight. `items` must not repeat a key.
    async fn batch_put(&self, table: &str, items: Vec<Item>) -> StoreResult<()> {
        let mut chunks = Vec::with_capacity(items.len().div_ceil(BATCH_ITEMS));
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            chunks.push(items.by_ref().take(BATCH_ITEMS).collect::<Vec<_>>());
        }
        futures::stream::iter(chunks)
            .map(|chunk| self.batch_put_chunk(table, chunk))
            .buffer_unordered(Self::BATCH_CONCURRENCY)
            .try_collect()
            .await
    }

    /// One `BatchWriteItem` of at most [`BATCH_ITEMS`] puts, resending what
    /// is left unprocessed until everything is written. Tries count the
    /// calls in a row that wrote nothing (an error, or every item left
    /// unprocessed), so the loop ends: each reset wrote at least one item.
    async fn batch_put_chunk(&self, table: &str, chunk: Vec<Item>) -> StoreResult<()> {
        let mut pending = chunk
            .into_iter()
            .map(|item| {
                let put = PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map_err(|e| RelayStoreError::Setup(e.to_string()))?;
                Ok(WriteRequest::builder().put_request(put).build())
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let mut stalled = 0;
        loop {
            let sent = pending.len();
            let request = self.client.batch_write_item().request_items(table, pending.clone());
            let failure = match request.send().await {
                Ok(out) => {
                    let left = out
                        .unprocessed_items
                        .and_then(|mut left| left.remove(table))
                        .unwrap_or_default();
                    if left.is_empty() {
                        return Ok(());
                    }
                    if left.len() < sent {
                        stalled = 0;
                    }
                    let failure = RelayStoreError::Unavailable(format!(
                        "batch write: {} of {sent} items unprocessed",
                        left.len()
                    ));
                    pending = left;
                    failure
                }
                Err(e) => sdk_error("batch write", &e),
            };
            stalled += 1;
            let Some(delay) = self.retry.retry_after(stalled, &failure) else {
                return Err(failure);
            };
            tracing::debug!(error = %failure, stalled, ?delay, "dynamodb batch write retried");
            tokio::time::sleep(delay).await;
        }
    }

    /// `DeleteItem`; whether the item was there.
    async fn delete(&self, table: &str, key: Item) -> StoreResult<bool> {
        self.retry
            .run("delete item", || {
                let request = self
                    .client
                    .delete_item()
                    .table_name(table)
                    .set_key(Some(key.clone()))
                    .return_values(ReturnValue::AllOld);
                async move {
                    let out = request.send().await.map_err(|e| sdk_error("delete item", &e))?;
                    Ok(out.attributes().is_some_and(|a| !a.is_empty()))
                }
            })
            .await
    }

    /// Up to `limit` items of one partition of `table`, following
    /// `LastEvaluatedKey` across pages.
    async fn query(
        &self,
        table: &str,
        pk: Vec<u8>,
        condition: Option<(&str, AttributeValue)>,
        forward: bool,
        limit: usize,
    ) -> StoreResult<Vec<Item>> {
        let mut values = HashMap::from([(":p".to_owned(), binary(pk))]);
        let expression = match condition {
            Some((op, value)) => {
                values.insert(":k".to_owned(), value);
                format!("p = :p AND s {op} :k")
            }
            None => "p = :p".to_owned(),
        };
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        while out.len() < limit {
            let page = i32::try_from((limit - out.len()).min(QUERY_PAGE)).unwrap_or(1);
            let response = self
                .retry
                .run("query", || {
                    let request = self
                        .client
                        .query()
                        .table_name(table)
                        .key_condition_expression(&expression)
                        .set_expression_attribute_values(Some(values.clone()))
                        .scan_index_forward(forward)
                        .consistent_read(true)
                        .limit(page)
                        .set_exclusive_start_key(start.clone());
                    async move { request.send().await.map_err(|e| sdk_error("query", &e)) }
                })
                .await?;
            out.extend(response.items().iter().cloned());
            match response.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn range(
        &self,
        room: RoomId,
        bucket: u32,
        from: Bound,
        limit: usize,
    ) -> StoreResult<Vec<StoredEnvelope>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (condition, forward) = match from {
            Bound::Start => (None, true),
            Bound::After(key) => (Some((">", binary(key.to_bytes()))), true),
            Bound::Before(key) => (Some(("<", binary(key.to_bytes()))), false),
        };
        let items = self
            .query(&self.envelopes, partition(&room, bucket), condition, forward, limit)
            .await?;
        items
            .iter()
            .map(|item| {
                Ok(StoredEnvelope {
                    room,
                    bucket,
                    key: EnvelopeKey::from_bytes(get_binary(item, SK)?)?,
                    bytes: get_binary(item, ENVELOPE)?.to_vec(),
                })
            })
            .collect()
    }

    fn chunk_key(partition: &[u8], index: usize) -> Item {
        HashMap::from([(PK.to_owned(), binary(partition)), (SK.to_owned(), number(index))])
    }

    async fn blob_manifest(&self, partition: &[u8]) -> StoreResult<Option<Item>> {
        let key = Self::chunk_key(partition, 0);
        self.retry
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
            .await
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

    /// A blob is split into chunks of at most `BLOB_CHUNK_BYTES`. Chunks
    /// 1.. are written first, unconditionally (a retry rewrites the same
    /// bytes); chunk 0, the manifest, is written last and conditionally,
    /// and carries the chunk count and the blob's length. A reader looks
    /// for the manifest first, so it never sees a blob whose chunks are not
    /// all written: a crash mid-put leaves only chunks no manifest names,
    /// which the next put of the blob overwrites and an erase removes.
    async fn put_blob(&self, room: RoomId, hash: BlobHash, blob: &[u8]) -> StoreResult<Written> {
        check_blob_len(blob)?;
        let partition = blob_partition(&room, &hash);
        let chunks: Vec<&[u8]> =
            if blob.is_empty() { vec![blob] } else { blob.chunks(BLOB_CHUNK_BYTES).collect() };
        if chunks.len() > 1 {
            // Spare rewriting a megabyte when the blob is already held.
            if self.blob_manifest(&partition).await?.is_some() {
                return Ok(Written::AlreadyPresent);
            }
            for (index, chunk) in chunks.iter().enumerate().skip(1) {
                let mut item = Self::chunk_key(&partition, index);
                item.insert(DATA.to_owned(), binary(*chunk));
                self.put(&self.blobs, item).await?;
            }
        }
        let mut manifest = Self::chunk_key(&partition, 0);
        manifest.insert(DATA.to_owned(), binary(chunks[0]));
        manifest.insert(CHUNKS.to_owned(), number(chunks.len()));
        manifest.insert(LEN.to_owned(), number(blob.len()));
        self.put_new(&self.blobs, manifest).await
    }

    async fn blob(&self, room: RoomId, hash: BlobHash) -> StoreResult<Option<Vec<u8>>> {
        let partition = blob_partition(&room, &hash);
        let Some(manifest) = self.blob_manifest(&partition).await? else {
            return Ok(None);
        };
        let count = get_number(&manifest, CHUNKS)?;
        let len = get_number(&manifest, LEN)?;
        if count == 0 || len > MAX_STORED_BLOB_BYTES {
            return Err(RelayStoreError::Corrupt("blob manifest".into()));
        }
        let mut blob = Vec::with_capacity(len);
        blob.extend_from_slice(get_binary(&manifest, DATA)?);
        if count > 1 {
            let rest = self
                .query(&self.blobs, partition.clone(), Some((">", number(0))), true, count - 1)
                .await?;
            for item in &rest {
                blob.extend_from_slice(get_binary(item, DATA)?);
            }
            if rest.len() != count - 1 && self.blob_manifest(&partition).await?.is_none() {
                // Erased between the two reads.
                return Ok(None);
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
    /// then every other chunk of the blob's partition, whether or not a
    /// manifest named it: an erase that was cut short, or a put that
    /// crashed before its manifest, is cleaned up by the next erase.
    async fn erase_blob(&self, room: RoomId, hash: BlobHash) -> StoreResult<bool> {
        let partition = blob_partition(&room, &hash);
        let held = self.delete(&self.blobs, Self::chunk_key(&partition, 0)).await?;
        let rest = self
            .query(&self.blobs, partition.clone(), Some((">", number(0))), true, usize::MAX)
            .await?;
        for item in rest {
            let key = item.into_iter().filter(|(name, _)| name == PK || name == SK).collect();
            self.delete(&self.blobs, key).await?;
        }
        Ok(held)
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
