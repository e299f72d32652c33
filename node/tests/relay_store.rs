//! The relay store conformance suite on every backend this machine can run.
//! sled runs here; the DynamoDB and CQL backends run where their servers are.
// The relay store, which needs the `relay` feature.
#![cfg(feature = "relay")]

mod common;

use common::relay_conformance as conformance;
use concord_node::relay::SledRelayStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_sled_relay_store_conforms_and_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledRelayStore::open(dir.path()).unwrap();
        conformance::run(&store).await;
        // sled keeps a blob in one row; the sizes around a 64 KiB chunk
        // are blobs it must keep all the same.
        conformance::run_blobs(&store, 64 * 1024).await;
    }
    let reopened = SledRelayStore::open(dir.path()).unwrap();
    conformance::run_reopen(&reopened).await;
}
