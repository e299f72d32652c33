//! The relay store conformance suite on the DynamoDB API, against a real
//! DynamoDB-API server process: the one at `CONCORD_DYNAMODB_ENDPOINT`, or
//! else DynamoDB Local started here by `tests/dynamodb-local.sh` (it stops
//! when this test process exits). Every test uses tables of its own.
#![cfg(feature = "dynamodb")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Select};
use common::relay_conformance::{self as conformance, BlobRows};
use concord_core::{BlobHash, RoomId};
use concord_node::relay::{DynamoRelayStore, RelayStore, RelayStoreError, RetryPolicy, Written};

use common::dynamodb::{endpoint, prefix, raw_client, REGION};

async fn store_at(endpoint: &str, prefix: &str) -> DynamoRelayStore {
    DynamoRelayStore::connect(Some(endpoint), prefix, REGION).await.unwrap()
}

/// Items in one envelope partition, counted by the server.
async fn count_partition(prefix: &str, partition: Vec<u8>) -> i32 {
    raw_client()
        .query()
        .table_name(format!("{prefix}envelopes"))
        .key_condition_expression("p = :p")
        .expression_attribute_values(":p", AttributeValue::B(Blob::new(partition)))
        .select(Select::Count)
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .count()
}

/// The `blobs` table of the store at `prefix`, read and written with a
/// plain client in the layout of the store's module docs: partition key
/// `p` = room ‖ blob hash, sort key `s` = chunk index (a number), `d` the
/// chunk's bytes.
struct DynamoBlobRows {
    prefix: String,
}

impl DynamoBlobRows {
    fn table(&self) -> String {
        format!("{}blobs", self.prefix)
    }
}

fn blob_partition(room: RoomId, hash: BlobHash) -> AttributeValue {
    AttributeValue::B(Blob::new([room.as_bytes().as_slice(), hash.as_bytes()].concat()))
}

impl BlobRows for DynamoBlobRows {
    fn chunk_bytes(&self) -> usize {
        DynamoRelayStore::BLOB_CHUNK_BYTES
    }

    async fn write_chunk(&self, room: RoomId, hash: BlobHash, index: u32, data: &[u8]) {
        raw_client()
            .put_item()
            .table_name(self.table())
            .item("p", blob_partition(room, hash))
            .item("s", AttributeValue::N(index.to_string()))
            .item("d", AttributeValue::B(Blob::new(data)))
            .send()
            .await
            .unwrap();
    }

    async fn remove_chunk(&self, room: RoomId, hash: BlobHash, index: u32) {
        raw_client()
            .delete_item()
            .table_name(self.table())
            .key("p", blob_partition(room, hash))
            .key("s", AttributeValue::N(index.to_string()))
            .send()
            .await
            .unwrap();
    }

    async fn count(&self, room: RoomId, hash: BlobHash) -> usize {
        let count = raw_client()
            .query()
            .table_name(self.table())
            .key_condition_expression("p = :p")
            .expression_attribute_values(":p", blob_partition(room, hash))
            .select(Select::Count)
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .count();
        count as usize
    }
}

fn upstream() -> SocketAddr {
    let url = endpoint();
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    std::net::ToSocketAddrs::to_socket_addrs(authority).unwrap().next().unwrap()
}

/// What a faulty front answers on a connection it fails.
#[derive(Clone, Copy)]
enum Fault {
    /// Alternately a 503 and a DynamoDB throttling answer.
    Transient,
    /// A `BatchWriteItem` that wrote nothing: every item it carried comes
    /// back in `UnprocessedItems` (a 503 for any other call).
    Unprocessed,
}

/// A TCP front for the server whose first `faults` connections each get a
/// transient failure, alternately a 503 and a DynamoDB throttling answer,
/// then closed; later connections are forwarded. Returns its endpoint and
/// the count of connections it has seen.
fn faulty_front(faults: usize) -> (String, Arc<AtomicUsize>) {
    faulty_front_where(Fault::Transient, move |n| n < faults)
}

/// A TCP front for the server that answers connection `n` (from 0) with
/// `fault` and closes it where `fails(n)`, and forwards the others.
fn faulty_front_where(
    fault: Fault,
    fails: impl Fn(usize) -> bool + Send + 'static,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let to = upstream();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            if fails(n) {
                std::thread::spawn(move || refuse(&mut client, fault, n.is_multiple_of(2)));
                continue;
            }
            let Ok(server) = TcpStream::connect(to) else { continue };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let mut server = server;
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client, &mut server);
                let _ = server.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (format!("http://{address}"), seen)
}

/// Reads one request, answers it with `fault` (a `Fault::Transient` with a
/// 503 if `unavailable`, else a throttle), and closes.
fn refuse(client: &mut TcpStream, fault: Fault, unavailable: bool) {
    let mut request = Vec::new();
    let mut buf = [0u8; 8192];
    // Read the headers, then the body, so closing does not reset the
    // connection under the answer.
    let body_start = loop {
        let Ok(n) = client.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..body_start]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < body_start + length {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let body = String::from_utf8_lossy(&request[body_start..]);
    let batch_write = head.contains("x-amz-target: dynamodb_20120810.batchwriteitem");
    let answer = if let (Fault::Unprocessed, true) = (fault, batch_write) {
        // The request's items, handed back: `{"RequestItems": {table:
        // [puts]}}` becomes `{"UnprocessedItems": {table: [puts]}}`.
        let body = body.replacen("\"RequestItems\"", "\"UnprocessedItems\"", 1);
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else if unavailable || matches!(fault, Fault::Unprocessed) {
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .to_string()
    } else {
        let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput."}"#;
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.0\r\n\
             x-amzn-ErrorType: ThrottlingException\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = client.write_all(answer.as_bytes());
    let _ = client.shutdown(std::net::Shutdown::Both);
}

/// Retries fast in tests, with a fixed jitter seed.
fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy { attempts, base: Duration::from_millis(5), seed: 7 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_dynamo_relay_store_conforms_and_keeps_everything_on_a_second_connection() {
    let prefix = prefix("conform");
    let store = store_at(endpoint(), &prefix).await;
    store.create_tables().await.unwrap();
    // Idempotent: creating again is fine.
    store.create_tables().await.unwrap();
    let started = Instant::now();
    conformance::run(&store).await;
    conformance::run_blobs(&store, DynamoRelayStore::BLOB_CHUNK_BYTES).await;
    conformance::run_blob_rows(&store, &DynamoBlobRows { prefix: prefix.clone() }).await;
    eprintln!("conformance suite on dynamodb: {:?}", started.elapsed());
    drop(store);
    let reopened = store_at(endpoint(), &prefix).await;
    conformance::run_reopen(&reopened).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_same_envelopes_put_concurrently_with_forced_retries_leave_one_item_each() {
    let prefix = prefix("idem");
    store_at(endpoint(), &prefix).await.create_tables().await.unwrap();
    // The first 12 connections fail, so the first puts of many tasks are
    // retried; whichever try lands first inserts, every other one finds it.
    let (front, seen) = faulty_front(12);
    let store = store_at(&front, &prefix).await.with_retry(quick_retry(8));
    let m = conformance::material();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        let envelopes = m.envelopes.clone();
        tasks.push(tokio::spawn(async move {
            let mut inserted = 0;
            for e in &envelopes {
                if store.put_envelope(e).await.unwrap() == Written::Inserted {
                    inserted += 1;
                }
            }
            inserted
        }));
    }
    let mut inserted = 0;
    for task in tasks {
        inserted += task.await.unwrap();
    }
    assert!(seen.load(Ordering::SeqCst) > 12, "every fault was met and passed");
    // A put whose answer was lost can report AlreadyPresent for its own
    // insert, so at most one Inserted per envelope.
    assert!(inserted <= m.envelopes.len(), "{inserted} inserts of {}", m.envelopes.len());
    let room = m.rooms[0].room_id();
    let mut total = 0;
    for bucket in store.buckets(room).await.unwrap() {
        let partition = [room.as_bytes().as_slice(), &bucket.to_be_bytes()].concat();
        total += count_partition(&prefix, partition).await;
        let rows = store.envelopes(room, bucket, None, 1000).await.unwrap();
        let keys: std::collections::BTreeSet<_> = rows.iter().map(|r| r.key).collect();
        assert_eq!(keys.len(), rows.len(), "no key twice in partition {bucket}");
    }
    assert_eq!(total as usize, m.envelopes.len(), "exactly one item per envelope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_throttled_and_unavailable_answers_are_retried_until_the_write_lands() {
    let prefix = prefix("retry");
    store_at(endpoint(), &prefix).await.create_tables().await.unwrap();
    // A 503, a throttle, a 503, then the server.
    let (front, seen) = faulty_front(3);
    let store = store_at(&front, &prefix).await.with_retry(quick_retry(5));
    let m = conformance::material();
    assert_eq!(store.put_room(&m.rooms[0]).await.unwrap(), Written::Inserted);
    assert_eq!(seen.load(Ordering::SeqCst), 4, "three failed tries, then one that landed");
    assert_eq!(store.rooms().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_server_that_keeps_failing_is_unavailable_after_the_policy_tries() {
    let prefix = prefix("giveup");
    let (front, seen) = faulty_front(usize::MAX);
    let store = store_at(&front, &prefix).await.with_retry(quick_retry(4));
    let m = conformance::material();
    let err = store.put_room(&m.rooms[0]).await.unwrap_err();
    assert!(matches!(err, RelayStoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(seen.load(Ordering::SeqCst), 4, "exactly the policy's tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_refused_connection_is_unavailable_not_a_setup_error() {
    // A port nothing listens on: bind, note, close.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = store_at(&format!("http://127.0.0.1:{port}"), &prefix("refused"))
        .await
        .with_retry(quick_retry(3));
    let started = Instant::now();
    let err = store.buckets(conformance::material().rooms[0].room_id()).await.unwrap_err();
    assert!(matches!(err, RelayStoreError::Unavailable(_)), "{err:?}");
    // Two backoffs of at least 2.5 ms and 5 ms were slept.
    assert!(started.elapsed() >= Duration::from_millis(7), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_missing_tables_are_a_setup_error_not_retried() {
    let (front, seen) = faulty_front(0);
    let store = store_at(&front, &prefix("missing")).await.with_retry(quick_retry(5));
    let err = store.buckets(conformance::material().rooms[0].room_id()).await.unwrap_err();
    assert!(matches!(err, RelayStoreError::Setup(_)), "{err:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 1, "one connection, one try");
}

/// Items in every partition of `room` in the `envelopes` table, counted by
/// the server, over the buckets the store lists.
async fn count_room<S: RelayStore>(store: &S, prefix: &str, room: RoomId) -> usize {
    let mut total = 0;
    for bucket in store.buckets(room).await.unwrap() {
        let partition = [room.as_bytes().as_slice(), &bucket.to_be_bytes()].concat();
        total += count_partition(prefix, partition).await as usize;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_batch_whose_calls_fail_then_land_on_retry_leaves_one_item_each() {
    let prefix = prefix("batchretry");
    store_at(endpoint(), &prefix).await.create_tables().await.unwrap();
    // The bucket write lands on connection 0; the envelope calls in flight
    // then open more connections, and 1 to 6 fail (503s and throttles),
    // so six calls are retried.
    let (front, seen) = faulty_front_where(Fault::Transient, |n| (1..=6).contains(&n));
    let store = store_at(&front, &prefix).await.with_retry(quick_retry(8));
    let m = conformance::batch_material();
    let twice: Vec<_> = m.envelopes.iter().chain(&m.envelopes).cloned().collect();
    store.put_envelopes(&twice).await.unwrap();
    assert!(seen.load(Ordering::SeqCst) > 6, "every fault was met and passed");
    assert_eq!(count_room(&store, &prefix, m.room).await, m.envelopes.len());
    conformance::assert_exactly(&store, m.room, &m.envelopes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_batch_sent_again_after_a_failure_midway_leaves_one_item_each() {
    let prefix = prefix("batchresend");
    store_at(endpoint(), &prefix).await.create_tables().await.unwrap();
    // Every odd connection fails and there is one try per call: the
    // bucket write (connection 0) lands, then of the envelope calls in
    // flight some land and some fail, and the batch fails.
    let (front, _) = faulty_front_where(Fault::Transient, |n| n % 2 == 1);
    let store = store_at(&front, &prefix).await.with_retry(quick_retry(1));
    let m = conformance::batch_material();
    let err = store.put_envelopes(&m.envelopes).await.unwrap_err();
    assert!(matches!(err, RelayStoreError::Unavailable(_)), "{err:?}");
    let healthy = store_at(endpoint(), &prefix).await;
    let landed = count_room(&healthy, &prefix, m.room).await;
    eprintln!("{landed} of {} envelopes landed before the failure", m.envelopes.len());
    assert!(landed < m.envelopes.len(), "the failed calls' envelopes are missing");
    // The relay sends the whole flight again.
    healthy.put_envelopes(&m.envelopes).await.unwrap();
    assert_eq!(count_room(&healthy, &prefix, m.room).await, m.envelopes.len());
    conformance::assert_exactly(&healthy, m.room, &m.envelopes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_unprocessed_batch_items_are_sent_again_until_written() {
    let prefix = prefix("unprocessed");
    store_at(endpoint(), &prefix).await.create_tables().await.unwrap();
    // The bucket write lands on connection 0; of the envelope calls in
    // flight, those on connections 1 to 3 write nothing and get every item
    // handed back, and send them again.
    let (front, seen) = faulty_front_where(Fault::Unprocessed, |n| (1..=3).contains(&n));
    let store = store_at(&front, &prefix).await.with_retry(quick_retry(5));
    let m = conformance::batch_material();
    store.put_envelopes(&m.envelopes).await.unwrap();
    assert!(seen.load(Ordering::SeqCst) > 3, "every unprocessed answer was met and passed");
    assert_eq!(count_room(&store, &prefix, m.room).await, m.envelopes.len());
    conformance::assert_exactly(&store, m.room, &m.envelopes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_batch_left_unprocessed_for_good_is_unavailable_after_the_policy_tries() {
    let prefix = prefix("unprocessedgiveup");
    store_at(endpoint(), &prefix).await.create_tables().await.unwrap();
    // Every call hands its items back, so the first, the buckets', never
    // lands.
    let (front, seen) = faulty_front_where(Fault::Unprocessed, |_| true);
    let store = store_at(&front, &prefix).await.with_retry(quick_retry(4));
    let m = conformance::material();
    let err = store.put_envelopes(&m.envelopes[..20]).await.unwrap_err();
    assert!(matches!(err, RelayStoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("unprocessed"), "{err}");
    assert_eq!(seen.load(Ordering::SeqCst), 4, "exactly the policy's tries");
}
