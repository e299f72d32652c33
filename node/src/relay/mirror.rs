//! The outbox mirror: copies what the relay's replica committed (its
//! outbox, written in the same commit) into the relay store, oldest first,
//! and removes each round from the outbox only once the relay store holds
//! it. The node runs a flush after every replica job and acts only when it
//! succeeded (the [`Persist`] hook), so "reached the relay" means "in the
//! relay store". The mirror also keeps the relay's metrics and its health:
//! whether the last flush succeeded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use concord_core::{Outbox, OutboxRecord, SledStore};
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::{RelayError, RelayStore, RelayStoreError, StoredEnvelope};
use crate::actor::Persist;

/// Outbox records written to the relay store per round of a flush.
const FLUSH_BATCH: usize = 2048;

/// The relay's own metrics.
#[derive(Clone)]
pub(super) struct RelayMetrics {
    envelopes_stored: Counter,
    blobs_stored: Counter,
    blobs_erased: Counter,
    rooms_stored: Counter,
    store_errors: Counter,
    store_seconds: Histogram,
}

impl RelayMetrics {
    pub(super) fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            envelopes_stored: Counter::default(),
            blobs_stored: Counter::default(),
            blobs_erased: Counter::default(),
            rooms_stored: Counter::default(),
            store_errors: Counter::default(),
            // 100 µs to about 6.5 s.
            store_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
        };
        let r = registry;
        r.register(
            "concord_relay_envelopes_stored",
            "Envelopes written to the relay store",
            metrics.envelopes_stored.clone(),
        );
        r.register(
            "concord_relay_blobs_stored",
            "Blobs written to the relay store",
            metrics.blobs_stored.clone(),
        );
        r.register(
            "concord_relay_blobs_erased",
            "Blobs erased from the relay store after a delete",
            metrics.blobs_erased.clone(),
        );
        r.register(
            "concord_relay_rooms_stored",
            "Rooms written to the relay store",
            metrics.rooms_stored.clone(),
        );
        r.register(
            "concord_relay_store_errors",
            "Relay store calls that failed (retried with the next flush)",
            metrics.store_errors.clone(),
        );
        r.register(
            "concord_relay_store_seconds",
            "Latency of relay store calls",
            metrics.store_seconds.clone(),
        );
        metrics
    }
}

/// Copies the replica's outbox into the relay store.
pub(super) struct Mirror<R: RelayStore> {
    outbox: Outbox<SledStore>,
    store: Arc<R>,
    /// One flush at a time, so records go out in commit order.
    lock: tokio::sync::Mutex<()>,
    metrics: RelayMetrics,
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl<R: RelayStore> Mirror<R> {
    /// A mirror of `outbox` into `store`, healthy until a flush fails.
    pub(super) fn new(outbox: Outbox<SledStore>, store: R, metrics: RelayMetrics) -> Self {
        Self {
            outbox,
            store: Arc::new(store),
            lock: tokio::sync::Mutex::new(()),
            metrics,
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }
    }

    /// The relay store the mirror writes to.
    pub(super) fn store(&self) -> &R {
        &self.store
    }

    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RelayStoreError>>,
    ) -> Result<T, RelayStoreError> {
        let start = Instant::now();
        let result = call.await;
        self.metrics.store_seconds.observe(start.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.store_errors.inc();
        }
        result
    }

    async fn put_envelopes(&self, batch: &mut Vec<StoredEnvelope>) -> Result<(), RelayStoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.timed(self.store.put_envelopes(batch)).await?;
        self.metrics.envelopes_stored.inc_by(batch.len() as u64);
        batch.clear();
        Ok(())
    }

    /// Writes out every record in the outbox, oldest first, and removes
    /// each round from the outbox once the relay store holds it.
    pub(super) async fn flush_all(&self) -> Result<(), RelayError> {
        let _turn = self.lock.lock().await;
        let result = self.drain().await;
        match &result {
            Ok(()) => self.healthy.store(true, Ordering::Relaxed),
            Err(e) => {
                self.healthy.store(false, Ordering::Relaxed);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
            }
        }
        result
    }

    async fn drain(&self) -> Result<(), RelayError> {
        loop {
            let outbox = self.outbox.clone();
            let records = tokio::task::spawn_blocking(move || outbox.pending(FLUSH_BATCH))
                .await
                .map_err(|e| RelayError::Io(e.to_string()))??;
            if records.is_empty() {
                return Ok(());
            }
            let mut seqs = Vec::with_capacity(records.len());
            let mut envelopes = Vec::new();
            for (seq, record) in records {
                seqs.push(seq);
                if let OutboxRecord::Envelope(envelope) = &record {
                    envelopes.push(StoredEnvelope::of(envelope));
                    continue;
                }
                // Anything else goes after the envelopes before it.
                self.put_envelopes(&mut envelopes).await?;
                self.write(record).await?;
            }
            self.put_envelopes(&mut envelopes).await?;
            let outbox = self.outbox.clone();
            tokio::task::spawn_blocking(move || outbox.ack(seqs))
                .await
                .map_err(|e| RelayError::Io(e.to_string()))??;
        }
    }

    /// Writes one record other than an envelope (those go in batches).
    async fn write(&self, record: OutboxRecord) -> Result<(), RelayStoreError> {
        match record {
            OutboxRecord::Room(genesis) => {
                self.timed(self.store.put_room(&genesis)).await?;
                self.metrics.rooms_stored.inc();
            }
            OutboxRecord::Blob { room, hash, blob } => {
                self.timed(self.store.put_blob(room, hash, &blob)).await?;
                self.metrics.blobs_stored.inc();
            }
            OutboxRecord::Erased { room, hash } => {
                if self.timed(self.store.erase_blob(room, hash)).await? {
                    self.metrics.blobs_erased.inc();
                }
            }
            OutboxRecord::Governance(change) => {
                self.timed(self.store.put_governance(
                    change.room(),
                    change.head(),
                    change.as_bytes(),
                ))
                .await?;
            }
            OutboxRecord::Envelope(_) => {}
        }
        Ok(())
    }
}

impl<R: RelayStore> Persist for Arc<Mirror<R>> {
    fn flush(&self) -> BoxFuture<'static, Result<(), String>> {
        let mirror = self.clone();
        Box::pin(async move { mirror.flush_all().await.map_err(|e| e.to_string()) })
    }
}

/// What the HTTP endpoint and the relay handle need of the mirror, whatever
/// its store type.
pub(super) trait MirrorStatus: Send + Sync {
    /// Whether the last flush succeeded; its error if not.
    fn healthy(&self) -> Result<(), String>;
    /// The relay store's backend name.
    fn backend(&self) -> &'static str;
}

impl<R: RelayStore> MirrorStatus for Mirror<R> {
    fn healthy(&self) -> Result<(), String> {
        if self.healthy.load(Ordering::Relaxed) {
            return Ok(());
        }
        let last = self.last_error.lock().ok().and_then(|l| l.clone());
        Err(last.unwrap_or_else(|| "relay store unavailable".into()))
    }
    fn backend(&self) -> &'static str {
        self.store.backend()
    }
}
