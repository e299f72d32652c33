//! The relay store conformance suite on CQL, against the ScyllaDB or
//! Cassandra cluster named by `CONCORD_CQL_NODES` (comma-separated
//! `host:port`). Every test makes a keyspace of its own, replicated
//! `CONCORD_CQL_RF` times (default 1), in the datacenter `CONCORD_CQL_DC` if
//! set, and drops it when it passes. Without `CONCORD_CQL_NODES` the tests
//! that need a cluster say so and pass without running; the ones that need
//! none (bad settings, a cluster that cannot be reached) run always.
#![cfg(feature = "cql")]

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::relay_conformance::{self as conformance, BlobRows};
use concord_core::{BlobHash, RoomId};
use concord_node::relay::{
    CqlOptions, CqlRelayStore, CqlRetryPolicy, RelayStore, RelayStoreError, Written,
};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::{Consistency, Statement};

/// The cluster's contact nodes, or `None` after saying why `test` is
/// skipped.
fn nodes(test: &str) -> Option<Vec<String>> {
    match std::env::var("CONCORD_CQL_NODES") {
        Ok(nodes) if !nodes.trim().is_empty() => {
            Some(nodes.split(',').map(|n| n.trim().to_owned()).collect())
        }
        _ => {
            eprintln!(
                "skipped {test}: CONCORD_CQL_NODES is not set; it names a ScyllaDB or \
                 Cassandra cluster (comma-separated host:port) to run the CQL relay store on"
            );
            None
        }
    }
}

fn options() -> CqlOptions {
    match std::env::var("CONCORD_CQL_DC") {
        Ok(dc) if !dc.is_empty() => CqlOptions::default().datacenter(dc),
        _ => CqlOptions::default(),
    }
}

fn replication_factor() -> u32 {
    std::env::var("CONCORD_CQL_RF").ok().and_then(|rf| rf.parse().ok()).unwrap_or(1)
}

/// A keyspace no other test or run uses, within the 48 characters allowed.
fn keyspace(test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    format!("concord_{test}_{:x}_{nanos:x}", std::process::id())
}

async fn store_at(nodes: &[String], keyspace: &str) -> CqlRelayStore {
    CqlRelayStore::connect(nodes, keyspace, options()).await.unwrap()
}

/// A fresh keyspace with the store's schema, and a store on it.
async fn fresh(nodes: &[String], test: &str) -> CqlRelayStore {
    let store = store_at(nodes, &keyspace(test)).await;
    store.create_schema(replication_factor()).await.unwrap();
    store
}

/// A plain session, to count rows and drop keyspaces.
async fn raw_session(nodes: &[String]) -> Session {
    SessionBuilder::new().known_nodes(nodes).build().await.unwrap()
}

async fn drop_keyspace(nodes: &[String], keyspace: &str) {
    let session = raw_session(nodes).await;
    let mut drop = Statement::new(format!("DROP KEYSPACE IF EXISTS {keyspace}"));
    drop.set_request_timeout(Some(Duration::from_secs(60)));
    session.query_unpaged(drop, ()).await.unwrap();
}

/// The `blobs` table of a keyspace, read and written with a plain session
/// in the layout of the store's module docs: partition key (`room`,
/// `hash`), clustering key `chunk`, `data` the chunk's bytes. Reads and
/// writes at the store's consistency, so they see its writes and it sees
/// theirs.
struct CqlBlobRows {
    session: Session,
    keyspace: String,
}

impl CqlBlobRows {
    async fn run(&self, text: String, values: impl SerializeRow) -> QueryResult {
        let mut statement = Statement::new(text);
        statement.set_consistency(consistency());
        self.session.query_unpaged(statement, values).await.unwrap()
    }
}

impl BlobRows for CqlBlobRows {
    fn chunk_bytes(&self) -> usize {
        CqlRelayStore::BLOB_CHUNK_BYTES
    }

    async fn write_chunk(&self, room: RoomId, hash: BlobHash, index: u32, data: &[u8]) {
        let text = format!(
            "INSERT INTO {}.blobs (room, hash, chunk, data) VALUES (?, ?, ?, ?)",
            self.keyspace
        );
        let index = i32::try_from(index).unwrap();
        self.run(text, (room.as_bytes().as_slice(), hash.as_bytes().as_slice(), index, data)).await;
    }

    async fn remove_chunk(&self, room: RoomId, hash: BlobHash, index: u32) {
        let text = format!(
            "DELETE FROM {}.blobs WHERE room = ? AND hash = ? AND chunk = ?",
            self.keyspace
        );
        let index = i32::try_from(index).unwrap();
        self.run(text, (room.as_bytes().as_slice(), hash.as_bytes().as_slice(), index)).await;
    }

    async fn count(&self, room: RoomId, hash: BlobHash) -> usize {
        let text =
            format!("SELECT COUNT(*) FROM {}.blobs WHERE room = ? AND hash = ?", self.keyspace);
        let result = self.run(text, (room.as_bytes().as_slice(), hash.as_bytes().as_slice())).await;
        let (n,): (i64,) = result.into_rows_result().unwrap().single_row().unwrap();
        usize::try_from(n).unwrap()
    }
}

/// The store's consistency level: quorum, local to the datacenter if one
/// is set.
fn consistency() -> Consistency {
    if options().datacenter.is_some() {
        Consistency::LocalQuorum
    } else {
        Consistency::Quorum
    }
}

/// Rows of `room` in the `envelopes` table, counted by the server, over the
/// buckets the store lists.
async fn count_room(nodes: &[String], store: &CqlRelayStore, room: RoomId) -> i64 {
    let session = raw_session(nodes).await;
    let mut count = Statement::new(format!(
        "SELECT COUNT(*) FROM {}.envelopes WHERE room = ? AND bucket = ?",
        store.keyspace()
    ));
    count.set_consistency(consistency());
    let mut total = 0;
    for bucket in store.buckets(room).await.unwrap() {
        let values = (room.as_bytes().as_slice(), i64::from(bucket));
        let result = session.query_unpaged(count.clone(), values).await.unwrap();
        let (n,): (i64,) = result.into_rows_result().unwrap().single_row().unwrap();
        total += n;
    }
    total
}

/// Retries fast in tests, with a fixed jitter seed.
fn quick_retry(attempts: u32, base: Duration) -> CqlRetryPolicy {
    CqlRetryPolicy { attempts, base, seed: 7 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_cql_relay_store_conforms_and_keeps_everything_on_a_second_connection() {
    let Some(nodes) =
        nodes("test_cql_relay_store_conforms_and_keeps_everything_on_a_second_connection")
    else {
        return;
    };
    let store = fresh(&nodes, "conform").await;
    // Idempotent: creating again is fine.
    store.create_schema(replication_factor()).await.unwrap();
    let keyspace = store.keyspace().to_owned();
    let started = Instant::now();
    conformance::run(&store).await;
    conformance::run_blobs(&store, CqlRelayStore::BLOB_CHUNK_BYTES).await;
    let rows = CqlBlobRows { session: raw_session(&nodes).await, keyspace: keyspace.clone() };
    conformance::run_blob_rows(&store, &rows).await;
    eprintln!("conformance suite on cql: {:?}", started.elapsed());
    drop(store);
    let reopened = store_at(&nodes, &keyspace).await;
    conformance::run_reopen(&reopened).await;
    drop_keyspace(&nodes, &keyspace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_same_envelopes_put_concurrently_leave_one_row_each() {
    let Some(nodes) = nodes("test_same_envelopes_put_concurrently_leave_one_row_each") else {
        return;
    };
    let store = fresh(&nodes, "idem").await;
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
    // A transaction whose outcome was lost and that was retried reports
    // AlreadyPresent for its own insert, so at most one Inserted each.
    assert!(inserted <= m.envelopes.len(), "{inserted} inserts of {}", m.envelopes.len());
    let room = m.rooms[0].room_id();
    assert_eq!(count_room(&nodes, &store, room).await as usize, m.envelopes.len());
    for bucket in store.buckets(room).await.unwrap() {
        let rows = store.envelopes(room, bucket, None, 1000).await.unwrap();
        let keys: std::collections::BTreeSet<_> = rows.iter().map(|r| r.key).collect();
        assert_eq!(keys.len(), rows.len(), "no key twice in partition {bucket}");
    }
    drop_keyspace(&nodes, store.keyspace()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_batches_repeated_and_concurrent_leave_one_row_each() {
    let Some(nodes) = nodes("test_batches_repeated_and_concurrent_leave_one_row_each") else {
        return;
    };
    let store = fresh(&nodes, "batch").await;
    let m = conformance::batch_material();
    let twice: Vec<_> = m.envelopes.iter().chain(&m.envelopes).cloned().collect();
    let (a, b) = tokio::join!(store.put_envelopes(&twice), store.put_envelopes(&m.envelopes));
    a.unwrap();
    b.unwrap();
    assert_eq!(count_room(&nodes, &store, m.room).await as usize, m.envelopes.len());
    conformance::assert_exactly(&store, m.room, &m.envelopes).await;
    drop_keyspace(&nodes, store.keyspace()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_missing_schema_is_a_setup_error_not_retried() {
    let Some(nodes) = nodes("test_a_missing_schema_is_a_setup_error_not_retried") else { return };
    // Five tries a second apart would take seconds; one try takes none.
    let store = store_at(&nodes, &keyspace("missing"))
        .await
        .with_retry(quick_retry(5, Duration::from_secs(2)));
    let started = Instant::now();
    let err = store.buckets(conformance::material().rooms[0].room_id()).await.unwrap_err();
    assert!(matches!(err, RelayStoreError::Setup(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    let err = store.create_schema(0).await.unwrap_err();
    assert!(matches!(err, RelayStoreError::Setup(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_cluster_that_cannot_be_reached_is_unavailable_not_a_setup_error() {
    // A port nothing listens on: bind, note, close. Needs no cluster.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let err = CqlRelayStore::connect([format!("127.0.0.1:{port}")], "concord", options())
        .await
        .unwrap_err();
    eprintln!("unreachable cluster, after {:?}: {err}", started.elapsed());
    assert!(matches!(err, RelayStoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_bad_settings_are_setup_errors_before_any_connection() {
    // Node addresses that would fail to connect: the settings fail first.
    let nowhere = ["127.0.0.1:1"];
    for keyspace in ["", "Concord", "relay-1", "ks; DROP TABLE x", &"k".repeat(49)] {
        let err = CqlRelayStore::connect(nowhere, keyspace, options()).await.unwrap_err();
        assert!(matches!(err, RelayStoreError::Setup(_)), "{keyspace:?}: {err:?}");
    }
    let err = CqlRelayStore::connect(Vec::<String>::new(), "concord", options()).await.unwrap_err();
    assert!(matches!(err, RelayStoreError::Setup(_)), "{err:?}");
}
