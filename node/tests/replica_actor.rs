//! The replica actor on a real sled store: concurrent callers, panics in
//! jobs, shutdown and reopen, and an executor that keeps running while the
//! replica flushes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concord_core::{Draft, ManualClock, Replica, SledStore};
use concord_node::{NodeError, ReplicaHandle};

const EPOCH_MILLIS: u64 = 1_750_000_000_000;

fn open(dir: &std::path::Path) -> Replica<SledStore> {
    let clock = Arc::new(ManualClock::new(EPOCH_MILLIS));
    Replica::open_with_seed(SledStore::open(dir).unwrap(), clock, [7; 32]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_concurrent_callers_each_get_their_own_durable_result() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, thread, _announcements) = ReplicaHandle::spawn(open(dir.path())).unwrap();
    let room = handle.try_call(|r| r.create_room("actor")).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let h = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                let text = format!("task {t} message {i}");
                ids.push(h.try_call(move |r| r.post(&room, Draft::text(text))).await.unwrap().id);
            }
            ids
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 200, "every post got its own id");
    handle.shutdown().await.unwrap();
    thread.join();
    // Everything acknowledged is on disk.
    let reopened = open(dir.path());
    let shown: BTreeSet<_> =
        reopened.snapshot(&room).unwrap().messages.iter().map(|m| m.id).collect();
    assert_eq!(shown, all);
}

#[tokio::test]
async fn test_a_panicking_job_is_reported_and_the_replica_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, _thread, _announcements) = ReplicaHandle::spawn(open(dir.path())).unwrap();
    let room = handle.try_call(|r| r.create_room("panics")).await.unwrap();
    let result: Result<(), _> = handle.call(|_| panic!("job exploded")).await;
    assert_eq!(result, Err(NodeError::Panicked("job exploded".into())));
    let sent = handle.try_call(move |r| r.post(&room, Draft::text("still here"))).await.unwrap();
    let body = handle
        .try_call(move |r| r.message_by_id(&room, &sent.id))
        .await
        .unwrap()
        .and_then(|m| m.body);
    assert_eq!(body.as_deref(), Some("still here"));
    // Core errors arrive typed.
    let unknown = concord_core::MessageId::from_bytes([9; 16]);
    let err = handle.try_call(move |r| r.delete(&room, &unknown)).await.unwrap_err();
    assert!(matches!(err, NodeError::Core(concord_core::Error::UnknownMessage(_))), "{err:?}");
}

#[tokio::test]
async fn test_calls_after_shutdown_fail_closed_and_the_store_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, thread, _announcements) = ReplicaHandle::spawn(open(dir.path())).unwrap();
    let other = handle.clone();
    let room = handle.try_call(|r| r.create_room("closing")).await.unwrap();
    handle.shutdown().await.unwrap();
    assert_eq!(other.call(|r| r.rooms().len()).await, Err(NodeError::Closed));
    assert_eq!(handle.shutdown().await, Err(NodeError::Closed));
    thread.join();
    assert_eq!(open(dir.path()).rooms()[0].id, room);
}

#[tokio::test(flavor = "current_thread")]
async fn test_a_slow_replica_job_does_not_block_the_executor() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, _thread, _announcements) = ReplicaHandle::spawn(open(dir.path())).unwrap();
    let ticks = Arc::new(AtomicU32::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // A job that holds the replica thread for 300 ms (a very slow flush).
    handle.call(|_| std::thread::sleep(Duration::from_millis(300))).await.unwrap();
    ticker.abort();
    // On the single executor thread, the ticker kept running meanwhile.
    assert!(ticks.load(Ordering::Relaxed) >= 10, "{} ticks", ticks.load(Ordering::Relaxed));
}
