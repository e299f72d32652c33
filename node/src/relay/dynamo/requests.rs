//! The DynamoDB requests the store is made of: items and their
//! attributes, the mapping of SDK errors, table creation, conditional and
//! plain puts, batched puts with their resending of unprocessed items,
//! deletes, and paged queries. Each goes through the store's [`Retrier`]
//! (see the parent module's docs).
//!
//! [`Retrier`]: super::super::retry::Retrier

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ReturnValue, ScalarAttributeType, TableStatus, WriteRequest,
};
use concord_core::RoomId;
use futures::{StreamExt, TryStreamExt};

use super::{
    DynamoRelayStore, BATCH_ITEMS, CONDITION_FAILED, ENVELOPE, IF_ABSENT, PK, QUERY_PAGE,
    RETRYABLE_CODES, SK, TABLE_ACTIVE_TIMEOUT,
};
use crate::relay::{Bound, EnvelopeKey, RelayStoreError, StoreResult, StoredEnvelope, Written};

/// An item: attribute name to value.
pub(super) type Item = HashMap<String, AttributeValue>;

pub(super) fn binary(bytes: impl Into<Vec<u8>>) -> AttributeValue {
    AttributeValue::B(Blob::new(bytes))
}

pub(super) fn number(n: usize) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

pub(super) fn partition(room: &RoomId, bucket: u32) -> Vec<u8> {
    [room.as_bytes().as_slice(), &bucket.to_be_bytes()].concat()
}

/// A room's entry for one bucket in the `buckets` table.
pub(super) fn bucket_item(room: &RoomId, bucket: u32) -> Item {
    HashMap::from([
        (PK.to_owned(), binary(room.as_bytes().as_slice())),
        (SK.to_owned(), binary(bucket.to_be_bytes())),
    ])
}

/// An envelope's row in the `envelopes` table.
pub(super) fn envelope_item(envelope: &StoredEnvelope) -> Item {
    HashMap::from([
        (PK.to_owned(), binary(partition(&envelope.room, envelope.bucket))),
        (SK.to_owned(), binary(envelope.key.to_bytes())),
        (ENVELOPE.to_owned(), binary(envelope.bytes.as_slice())),
    ])
}

pub(super) fn get_binary<'a>(item: &'a Item, name: &str) -> StoreResult<&'a [u8]> {
    match item.get(name) {
        Some(AttributeValue::B(b)) => Ok(b.as_ref()),
        _ => Err(RelayStoreError::Corrupt(format!("missing binary attribute {name}"))),
    }
}

pub(super) fn get_number(item: &Item, name: &str) -> StoreResult<usize> {
    match item.get(name) {
        Some(AttributeValue::N(n)) => n
            .parse()
            .map_err(|_| RelayStoreError::Corrupt(format!("attribute {name} is not a count"))),
        _ => Err(RelayStoreError::Corrupt(format!("missing number attribute {name}"))),
    }
}

/// Maps an SDK error: transient failures to `Unavailable`, everything
/// else (a missing table, bad credentials, a rejected request) to `Setup`.
pub(super) fn sdk_error<E>(what: &str, err: &SdkError<E, HttpResponse>) -> RelayStoreError
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

impl DynamoRelayStore {
    pub(super) async fn create_table(
        &self,
        name: &str,
        sort: Option<ScalarAttributeType>,
    ) -> StoreResult<()> {
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

    pub(super) async fn wait_active(&self, name: &str) -> StoreResult<()> {
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
    pub(super) async fn put_new(&self, table: &str, item: Item) -> StoreResult<Written> {
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
    pub(super) async fn put(&self, table: &str, item: Item) -> StoreResult<()> {
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
    pub(super) async fn batch_put(&self, table: &str, items: Vec<Item>) -> StoreResult<()> {
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
    pub(super) async fn delete(&self, table: &str, key: Item) -> StoreResult<bool> {
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
    pub(super) async fn query(
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

    pub(super) async fn range(
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
}
