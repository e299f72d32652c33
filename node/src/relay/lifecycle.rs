//! The relay node: an always-on peer that holds rooms for devices that are
//! rarely online at the same time.
//!
//! A relay is a [`Node`] with three differences:
//!
//! - it takes up a room when a device starts a catch-up about it and
//!   presents the room's signed genesis (every device does on a session's
//!   first request), and it serves circuit relay v2 for devices behind NAT;
//! - its replica's store is wrapped in an [`OutboxStore`], so every commit
//!   also records, atomically, what the relay's durable [`RelayStore`]
//!   must copy or erase;
//! - every replica job is followed by a flush of that outbox into the
//!   relay store, and only then does the node act: a sync flight is
//!   answered, a gossiped envelope accepted and forwarded. A device's
//!   catch-up therefore finishes, and its messages show "reached", only
//!   once the relay's store holds them. If the store is unreachable, the
//!   request fails and nothing is acknowledged; the records wait in the
//!   outbox and go out with the next flush.
//!
//! A relay killed at any moment restarts with nothing lost: the replica's
//! commits are durable, and the outbox holds whatever the relay store had
//! not yet acknowledged. A relay whose local disk was lost rebuilds its
//! replica from the relay store on start.
//!
//! This file is the relay's lifecycle: [`Relay::start`] (open the replica,
//! write out what an earlier run left in the outbox, rebuild, start the
//! node and the HTTP endpoint), [`Relay::shutdown`], and the rebuild.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use concord_core::{
    Delivery, Envelope, Genesis, GovChange, Outbox, OutboxStore, Replica, SledStore, SystemClock,
};
use libp2p::Multiaddr;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::http::{self, Sources};
use super::key_file::{read_key_file, write_key_file};
use super::mirror::{Mirror, MirrorStatus, RelayMetrics};
use super::{RelayConfig, RelayError, RelayStore};
use crate::actor::Persist;
use crate::node::Node;
use crate::ticket::RoomTicket;

/// Envelopes read from the relay store per request when rebuilding.
const REBUILD_PAGE: usize = 500;

/// The store a relay's replica runs on.
pub type RelayReplicaStore = OutboxStore<SledStore>;

/// A running relay.
pub struct Relay {
    node: Node<RelayReplicaStore>,
    status: Arc<dyn MirrorStatus>,
    metrics_addr: Option<SocketAddr>,
    http: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("peer_id", &self.node.peer_id())
            .field("backend", &self.status.backend())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Starts a relay on `config` persisting to `store`: opens the replica,
    /// writes out what an earlier run left in the outbox, rebuilds rooms
    /// the replica lacks from the store, starts the node, listens, and
    /// serves the metrics endpoint. Must be called within a tokio runtime.
    pub async fn start<R: RelayStore>(config: RelayConfig, store: R) -> Result<Self, RelayError> {
        config.validate()?;
        let mut registry = Registry::default();
        let metrics = RelayMetrics::new(&mut registry);
        let replica_dir = config.replica_dir();
        let key_file = config.key_file.clone();
        let (replica, outbox) =
            tokio::task::spawn_blocking(move || open_replica(&replica_dir, key_file.as_deref()))
                .await
                .map_err(|e| RelayError::Io(e.to_string()))??;
        let mirror = Arc::new(Mirror::new(outbox, store, metrics));
        // What an unclean stop left unwritten goes out before anything new.
        mirror.flush_all().await?;
        let replica = rebuild(replica, &mirror).await?;
        mirror.flush_all().await?;
        let persist: Arc<dyn Persist> = Arc::new(mirror.clone());
        let node =
            Node::start_with(replica, Arc::new(SystemClock), config.node_config(), Some(persist))?;
        for addr in &config.listen {
            let addr: Multiaddr =
                addr.parse().map_err(|e| RelayError::Config(format!("{addr}: {e}")))?;
            node.listen(addr).await?;
        }
        for ticket in &config.rooms {
            let ticket: RoomTicket =
                ticket.parse().map_err(|e| RelayError::Config(format!("room ticket: {e}")))?;
            node.join_ticket(&ticket).await?;
        }
        let status: Arc<dyn MirrorStatus> = mirror;
        let (metrics_addr, http) = match config.metrics {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| RelayError::Io(format!("metrics endpoint {addr}: {e}")))?;
                let bound = listener.local_addr().map_err(|e| RelayError::Io(e.to_string()))?;
                let sources = RelaySources {
                    node: node.clone(),
                    registry: Arc::new(registry),
                    status: status.clone(),
                };
                let task = tokio::spawn(http::serve(listener, sources, http::Limits::DEFAULT));
                (Some(bound), Some(task))
            }
            None => (None, None),
        };
        tracing::info!(
            peer_id = %node.peer_id(),
            backend = status.backend(),
            metrics = ?metrics_addr,
            "relay started"
        );
        Ok(Self { node, status, metrics_addr, http })
    }

    /// The relay's node (its peer id, addresses, rooms, events).
    pub fn node(&self) -> &Node<RelayReplicaStore> {
        &self.node
    }

    /// Where the metrics endpoint listens, if on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The relay store's backend name.
    pub fn backend(&self) -> &'static str {
        self.status.backend()
    }

    /// Whether the last write to the relay store succeeded; why not if not.
    pub fn health(&self) -> Result<(), String> {
        self.status.healthy()
    }

    /// Stops serving: says offline, stops the swarm and the metrics
    /// endpoint, and closes the replica. Everything acknowledged is in the
    /// relay store already.
    pub async fn shutdown(mut self) -> Result<(), RelayError> {
        if let Some(http) = self.http.take() {
            http.abort();
        }
        self.node.shutdown().await?;
        Ok(())
    }
}

/// Opens the replica on its outbox store, as the device `key_file` names
/// if it is set (see [`RelayConfig::key_file`]).
fn open_replica(
    dir: &Path,
    key_file: Option<&Path>,
) -> Result<(Replica<RelayReplicaStore>, Outbox<SledStore>), RelayError> {
    std::fs::create_dir_all(dir).map_err(|e| RelayError::Io(format!("{}: {e}", dir.display())))?;
    let store = OutboxStore::new(SledStore::open(dir)?)?;
    let outbox = store.outbox();
    let clock = Arc::new(SystemClock);
    let mut replica = match key_file {
        None => Replica::open(store, clock)?,
        Some(path) => match read_key_file(path)? {
            Some(seed) => Replica::open_with_seed(store, clock, seed)
                .map_err(|e| RelayError::Config(format!("key_file {}: {e}", path.display())))?,
            None => {
                let replica = Replica::open(store, clock)?;
                write_key_file(path, &replica.device_seed())?;
                replica
            }
        },
    };
    // A relay stores and serves ciphertext: it holds no room key, publishes
    // no device keys and decrypts nothing.
    replica.set_blind(true);
    Ok((replica, outbox))
}

/// What the HTTP endpoint serves: the node's metrics and the relay's, and
/// the mirror's health.
struct RelaySources {
    node: Node<RelayReplicaStore>,
    registry: Arc<Registry>,
    status: Arc<dyn MirrorStatus>,
}

impl Sources for RelaySources {
    async fn metrics(&self) -> String {
        let mut text = self.node.metrics_text().await.unwrap_or_default();
        // Both halves are OpenMetrics documents; keep one end marker.
        if let Some(cut) = text.rfind("# EOF") {
            text.truncate(cut);
        }
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    fn health(&self) -> Result<(), String> {
        self.status.healthy()
    }
}

/// Rebuilds rooms the relay store holds and the replica does not (the
/// relay's local disk was lost): joins each, applies its governance, then
/// its envelopes, with their blobs, bucket by bucket.
async fn rebuild<R: RelayStore>(
    replica: Replica<RelayReplicaStore>,
    mirror: &Mirror<R>,
) -> Result<Replica<RelayReplicaStore>, RelayError> {
    let held: Vec<_> = replica.rooms().into_iter().map(|r| r.id).collect();
    let missing: Vec<Genesis> = mirror
        .store()
        .rooms()
        .await?
        .into_iter()
        .filter(|g| !held.contains(&g.room_id()))
        .collect();
    let mut replica = replica;
    for genesis in missing {
        let room = genesis.room_id();
        tracing::info!(%room, "rebuilding a room from the relay store");
        replica.join_room(genesis.as_bytes())?;
        // Governance first: the envelopes are judged by the heads they cite.
        let mut changes = Vec::new();
        for raw in mirror.store().governance(room).await? {
            match GovChange::from_bytes(&raw) {
                Ok(change) => changes.push(change),
                Err(e) => {
                    tracing::warn!(%room, %e, "skipping a governance change that fails to verify")
                }
            }
        }
        for outcome in replica.apply_governance(&room, changes)? {
            if let Err(e) = outcome {
                tracing::warn!(%room, %e, "a stored governance change was refused");
            }
        }
        for bucket in mirror.store().buckets(room).await? {
            let mut after = None;
            loop {
                let page = mirror.store().envelopes(room, bucket, after, REBUILD_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.key);
                let full = page.len() == REBUILD_PAGE;
                let mut deliveries = Vec::with_capacity(page.len());
                for stored in page {
                    let Ok(envelope) = Envelope::from_bytes(&stored.bytes) else {
                        tracing::warn!(%room, bucket, "skipping an envelope that fails to verify");
                        continue;
                    };
                    let mut blobs = Vec::new();
                    for hash in envelope.blob_hashes() {
                        if let Some(blob) = mirror.store().blob(room, *hash).await? {
                            blobs.push(blob);
                        }
                    }
                    if let Ok(delivery) = Delivery::new(envelope, blobs) {
                        deliveries.push(delivery);
                    }
                }
                replica.apply(&room, deliveries)?;
                if !full {
                    break;
                }
            }
        }
    }
    Ok(replica)
}
