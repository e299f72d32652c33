//! `relay-ingest-dynamodb` (feature `dynamodb`): the relay's ingest into
//! [`DynamoRelayStore`] against raw aws-sdk-dynamodb `BatchWriteItem`s of
//! the same items, on the DynamoDB-API server at `CONCORD_DYNAMODB_ENDPOINT`
//! or else on Amazon's DynamoDB Local, started here by
//! `tests/dynamodb-local.sh` (as the node's tests start it) and stopped
//! when this process exits.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, ensure, Result};
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, Select, WriteRequest};
use aws_sdk_dynamodb::Client;
use concord_core::RoomId;
use concord_node::relay::{DynamoRelayStore, StoredEnvelope};
use futures::{StreamExt, TryStreamExt};

use super::relay::{
    baseline_text, ingest, partitions, raw_verify, report, size, store_only, time_verify,
    EncryptionCost, Ingest, Phase,
};
use super::report::Report;
use super::stats::runs;
use super::{Ctx, Rooms};

const REGION: &str = "us-east-1";

/// Puts per `BatchWriteItem`: DynamoDB's limit, as the store uses.
const BATCH_ITEMS: usize = 25;

/// Envelopes of the untimed warm-up of each side, so that DynamoDB Local's
/// JVM has compiled its write path before the first timed run.
const WARM_UP: usize = 2_000;

/// The endpoint: the given one, or DynamoDB Local started for this process.
fn endpoint() -> Result<String> {
    if let Ok(endpoint) = std::env::var("CONCORD_DYNAMODB_ENDPOINT") {
        return Ok(endpoint);
    }
    let started = Instant::now();
    let endpoint = concord_tests::dynamodb_local::start()?.endpoint;
    eprintln!("DynamoDB Local at {endpoint}, up in {:?}", started.elapsed());
    Ok(endpoint)
}

/// A plain client configured as the store configures its own: fixed
/// credentials, the SDK's retries off.
fn raw_client(endpoint: &str) -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("concord", "concord", None, None, "bench"))
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

type Item = HashMap<String, AttributeValue>;

/// The store's items (`node/src/relay/dynamo.rs`, "Tables"): an envelope
/// row is `p` = room ‖ bucket, `s` = hlc ‖ author ‖ blake3, `e` = the
/// envelope; a bucket entry is `p` = room, `s` = bucket.
fn envelope_item(r: &StoredEnvelope) -> Item {
    let partition = [r.room.as_bytes().as_slice(), &r.bucket.to_be_bytes()].concat();
    HashMap::from([
        ("p".to_owned(), AttributeValue::B(Blob::new(partition))),
        ("s".to_owned(), AttributeValue::B(Blob::new(r.key.to_bytes()))),
        ("e".to_owned(), AttributeValue::B(Blob::new(r.bytes.as_slice()))),
    ])
}

fn bucket_item(room: &RoomId, bucket: u32) -> Item {
    HashMap::from([
        ("p".to_owned(), AttributeValue::B(Blob::new(room.as_bytes().as_slice()))),
        ("s".to_owned(), AttributeValue::B(Blob::new(bucket.to_be_bytes()))),
    ])
}

/// Raw `BatchWriteItem`s of `items` into `table`: 25 per call,
/// [`DynamoRelayStore::BATCH_CONCURRENCY`] calls in flight, unprocessed
/// items sent again at once.
async fn raw_batch_put(client: &Client, table: &str, items: Vec<Item>) -> Result<()> {
    let mut chunks = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        chunks.push(items.by_ref().take(BATCH_ITEMS).collect::<Vec<_>>());
    }
    futures::stream::iter(chunks)
        .map(|chunk| async move {
            let mut pending = chunk
                .into_iter()
                .map(|item| {
                    let put = PutRequest::builder().set_item(Some(item)).build()?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<Result<Vec<_>>>()?;
            while !pending.is_empty() {
                let out = client.batch_write_item().request_items(table, pending).send().await?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut left| left.remove(table))
                    .unwrap_or_default();
            }
            anyhow::Ok(())
        })
        .buffer_unordered(DynamoRelayStore::BATCH_CONCURRENCY)
        .try_collect()
        .await
}

/// The raw baseline: per flight its bucket entries, then its envelope rows.
async fn raw_ingest(client: &Client, prefix: &str, w: &Ingest) -> Result<()> {
    let (envelopes, buckets) = (format!("{prefix}envelopes"), format!("{prefix}buckets"));
    for flight in &w.flights {
        raw_verify(&w.envelopes[flight.clone()])?;
        let rows = &w.rows[flight.clone()];
        let index = partitions(rows).iter().map(|(room, b)| bucket_item(room, *b)).collect();
        raw_batch_put(client, &buckets, index).await?;
        raw_batch_put(client, &envelopes, rows.iter().map(envelope_item).collect()).await?;
    }
    Ok(())
}

/// Items in the `envelopes` table of `prefix` for the workload's
/// partitions, counted by the server.
async fn count(client: &Client, prefix: &str, w: &Ingest) -> Result<usize> {
    let mut total = 0;
    for (room, bucket) in partitions(&w.rows) {
        let partition = [room.as_bytes().as_slice(), &bucket.to_be_bytes()].concat();
        let mut start = None;
        loop {
            let out = client
                .query()
                .table_name(format!("{prefix}envelopes"))
                .key_condition_expression("p = :p")
                .expression_attribute_values(":p", AttributeValue::B(Blob::new(partition.clone())))
                .select(Select::Count)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await?;
            total += usize::try_from(out.count())?;
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
    }
    Ok(total)
}

/// Fresh tables for one side of one run, made by the store so that both
/// sides write the same table layout.
async fn fresh_tables(endpoint: &str, prefix: &str) -> Result<DynamoRelayStore> {
    let store = DynamoRelayStore::connect(Some(endpoint), prefix, REGION).await?;
    store.create_tables().await?;
    Ok(store)
}

/// Drops a run's tables, so that the server's memory holds one run at most.
async fn drop_tables(client: &Client, prefix: &str) -> Result<()> {
    for table in ["envelopes", "buckets", "blobs", "rooms"] {
        client.delete_table().table_name(format!("{prefix}{table}")).send().await?;
    }
    Ok(())
}

/// One timed side on fresh tables; returns its seconds after checking that
/// the tables hold every row once.
async fn side(
    endpoint: &str,
    client: &Client,
    prefix: &str,
    phase: Phase,
    w: &Ingest,
) -> Result<f64> {
    let store = fresh_tables(endpoint, prefix).await?;
    let started = Instant::now();
    match phase {
        Phase::Ingest => ingest(&store, w).await?,
        Phase::StoreOnly => store_only(&store, w).await?,
        Phase::Raw => raw_ingest(client, prefix, w).await?,
        Phase::Verify => bail!("verify stores nothing"),
    }
    let secs = started.elapsed().as_secs_f64();
    let held = count(client, prefix, w).await?;
    ensure!(held == w.rows.len(), "{phase:?}: {held} rows of {} stored", w.rows.len());
    drop_tables(client, prefix).await?;
    Ok(secs)
}

/// `relay-ingest-dynamodb`: into [`DynamoRelayStore`], against raw
/// `BatchWriteItem`s.
pub fn run(ctx: &Ctx) -> Result<Report> {
    run_in(ctx, Rooms::Unencrypted)
}

/// `relay-ingest-dynamodb-e2ee`: the same with an encrypted room's
/// envelopes, the baseline checking each signature before it writes.
pub fn run_e2ee(ctx: &Ctx) -> Result<Report> {
    run_in(ctx, Rooms::Encrypted)
}

fn run_in(ctx: &Ctx, rooms: Rooms) -> Result<Report> {
    let name = rooms.name("relay-ingest-dynamodb", "relay-ingest-dynamodb-e2ee");
    let w = Ingest::generate(ctx.seed, size(ctx), rooms)?;
    let mut cost = EncryptionCost::of(ctx, &w)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let endpoint = endpoint()?;
    let client = raw_client(&endpoint);
    let tag = format!("concord_bench_{}", std::process::id());
    let warm = Ingest::generate(ctx.seed ^ 1, WARM_UP.min(w.envelopes.len()), rooms)?;
    for phase in [Phase::Ingest, Phase::Raw] {
        let prefix = format!("{tag}_warm_{phase:?}_");
        rt.block_on(side(&endpoint, &client, &prefix, phase, &warm))?;
    }
    let n = w.envelopes.len() as f64;
    let mut run = 0;
    let rows = runs(name, ctx.runs, || {
        let mut out = [0.0; 4];
        for phase in Phase::order(run) {
            let secs = match phase {
                Phase::Verify => time_verify(&w)?,
                _ => {
                    let prefix = format!("{tag}_{run}_{phase:?}_");
                    rt.block_on(side(&endpoint, &client, &prefix, phase, &w))?
                }
            };
            out[phase.column()] = n / secs;
        }
        if let Some(cost) = &mut cost {
            cost.record(out[Phase::Verify.column()])?;
        }
        run += 1;
        Ok(out)
    })?;
    let mut report = report(
        name,
        &w,
        &rows,
        "raw BatchWriteItem + the same verification",
        baseline_text(
            &w,
            &format!(
                "aws-sdk-dynamodb `BatchWriteItem`s of the same items into the same table \
                 layout (made by `DynamoRelayStore::create_tables`, fresh for each side of \
                 each run), a client set up as the store's; per flight its bucket entries, \
                 then its envelope rows, 25 per call, {} calls in flight; unprocessed items \
                 sent again",
                DynamoRelayStore::BATCH_CONCURRENCY
            ),
        ),
    );
    if let Some(cost) = &cost {
        report.metrics.extend(cost.metrics(&w));
    }
    Ok(report)
}
