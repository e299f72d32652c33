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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_core::{
    Delivery, Envelope, Genesis, GovChange, Outbox, OutboxRecord, OutboxStore, Replica, SledStore,
    SystemClock,
};
use futures::future::BoxFuture;
use libp2p::Multiaddr;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{RelayStore, RelayStoreError, StoredEnvelope};
use crate::actor::Persist;
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::node::Node;
use crate::ticket::RoomTicket;

/// Outbox records written to the relay store per round of a flush.
const FLUSH_BATCH: usize = 2048;
/// Envelopes read from the relay store per request when rebuilding.
const REBUILD_PAGE: usize = 500;
/// Largest HTTP request head the metrics endpoint reads.
const MAX_HTTP_HEAD: usize = 8 * 1024;
/// How long the metrics endpoint waits for a request head.
const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The store a relay's replica runs on.
pub type RelayReplicaStore = OutboxStore<SledStore>;

/// Errors of starting or running a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The config is wrong; nothing was started.
    #[error("relay config: {0}")]
    Config(String),
    /// The relay store failed.
    #[error(transparent)]
    Store(#[from] RelayStoreError),
    /// The node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A local file or socket failed.
    #[error("{0}")]
    Io(String),
}

impl From<concord_core::Error> for RelayError {
    fn from(e: concord_core::Error) -> Self {
        RelayError::Node(NodeError::Core(e))
    }
}

impl From<concord_core::StoreError> for RelayError {
    fn from(e: concord_core::StoreError) -> Self {
        RelayError::Node(NodeError::Core(e.into()))
    }
}

/// Which relay store a relay persists to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum StoreConfig {
    /// The embedded default: a sled database in the data directory.
    Sled {
        /// Where; `<data_dir>/store` if unset.
        path: Option<PathBuf>,
    },
    /// The DynamoDB API: AWS DynamoDB, ScyllaDB Alternator, DynamoDB Local.
    /// Needs the `dynamodb` feature.
    Dynamodb {
        /// Endpoint URL; AWS's regional endpoint if unset.
        endpoint: Option<String>,
        /// Region.
        region: String,
        /// Prefix of the four table names.
        table_prefix: String,
    },
    /// CQL: ScyllaDB or Apache Cassandra. Needs the `cql` feature.
    Cql {
        /// Contact points, `host:port`.
        nodes: Vec<String>,
        /// Keyspace.
        keyspace: String,
        /// Replication factor `init-store` creates the keyspace with.
        #[serde(default = "default_replication")]
        replication_factor: u32,
        /// The relay's datacenter: requests go to its nodes at
        /// `LOCAL_QUORUM`; without one, `QUORUM` over the cluster.
        #[serde(default)]
        datacenter: Option<String>,
        /// User for password authentication; the password comes from the
        /// environment variable `CONCORD_CQL_PASSWORD`, never the file.
        #[serde(default)]
        user: Option<String>,
    },
}

fn default_replication() -> u32 {
    3
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Sled { path: None }
    }
}

/// A relay's settings, read from a TOML file; command-line flags override
/// some of them. Every field but `data_dir` has a default.
///
/// ```toml
/// data_dir = "/var/lib/concord-relay"
/// listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
/// metrics = "127.0.0.1:9464"
///
/// [store]
/// backend = "sled"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Where the relay keeps its replica (and the sled relay store).
    pub data_dir: PathBuf,
    /// A file holding the relay's device key (its seed, 64 hex digits),
    /// kept apart from `data_dir` so that a relay rebuilt on a new disk
    /// keeps its identity: its peer id, its addresses and the author key
    /// rooms list. Written on first start if absent (mode 0600), with the
    /// key `data_dir` holds or a new one; a `data_dir` holding another key
    /// is refused. Unset: the key lives in `data_dir` only.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Multiaddrs to listen on.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Address of the HTTP endpoint serving `/metrics` and `/health`; off
    /// if unset.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Take up any room a device presents (governance will restrict this).
    #[serde(default = "yes")]
    pub serve_rooms: bool,
    /// Tickets of rooms to serve from the start.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Period of catch-up with every connected device, in seconds.
    #[serde(default = "default_sync_secs")]
    pub sync_interval_secs: u64,
    /// Established connections in all.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Bad sync requests a peer may send before it is banned.
    #[serde(default = "default_strikes")]
    pub max_sync_strikes: u32,
    /// How long a misbehaving peer stays banned, in seconds.
    #[serde(default = "default_ban_secs")]
    pub ban_secs: u64,
    /// The relay store.
    #[serde(default)]
    pub store: StoreConfig,
}

fn default_listen() -> Vec<String> {
    vec!["/ip4/0.0.0.0/tcp/4001".into(), "/ip4/0.0.0.0/udp/4001/quic-v1".into()]
}
fn yes() -> bool {
    true
}
fn default_sync_secs() -> u64 {
    30
}
fn default_max_connections() -> u32 {
    1024
}
fn default_strikes() -> u32 {
    3
}
fn default_ban_secs() -> u64 {
    600
}

impl RelayConfig {
    /// A config with every default, keeping its data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            key_file: None,
            listen: default_listen(),
            metrics: None,
            serve_rooms: true,
            rooms: Vec::new(),
            sync_interval_secs: default_sync_secs(),
            max_connections: default_max_connections(),
            max_sync_strikes: default_strikes(),
            ban_secs: default_ban_secs(),
            store: StoreConfig::default(),
        }
    }

    /// Parses and checks a TOML config.
    pub fn from_toml(text: &str) -> Result<Self, RelayError> {
        let config: Self = toml::from_str(text).map_err(|e| RelayError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), RelayError> {
        let bad = |what: String| Err(RelayError::Config(what));
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir is empty".into());
        }
        if self.listen.is_empty() {
            return bad("listen names no address".into());
        }
        for addr in &self.listen {
            if addr.parse::<Multiaddr>().is_err() {
                return bad(format!("listen address {addr:?} is not a multiaddr"));
            }
        }
        for ticket in &self.rooms {
            if let Err(e) = ticket.parse::<RoomTicket>() {
                return bad(format!("room ticket {ticket:?}: {e}"));
            }
        }
        match &self.store {
            StoreConfig::Dynamodb { region, table_prefix, .. } => {
                if region.is_empty() || table_prefix.is_empty() {
                    return bad("store: region and table_prefix must be set".into());
                }
            }
            StoreConfig::Cql { nodes, keyspace, replication_factor, .. } => {
                if nodes.is_empty() || keyspace.is_empty() || *replication_factor == 0 {
                    return bad("store: nodes, keyspace and replication_factor must be set".into());
                }
            }
            StoreConfig::Sled { .. } => {}
        }
        self.node_config().validate()?;
        Ok(())
    }

    /// The node settings this config implies.
    pub fn node_config(&self) -> NodeConfig {
        NodeConfig::default()
            .mdns(false)
            .relay_server(true)
            .serve_rooms_on_request(self.serve_rooms)
            .sync_interval(Duration::from_secs(self.sync_interval_secs))
            .connection_limits(self.max_connections, 8)
            .sync_strikes(self.max_sync_strikes, Duration::from_secs(self.ban_secs))
    }

    /// Where the replica lives.
    pub fn replica_dir(&self) -> PathBuf {
        self.data_dir.join("replica")
    }

    /// Where the sled relay store lives (when it is the backend).
    pub fn sled_store_dir(&self) -> PathBuf {
        match &self.store {
            StoreConfig::Sled { path: Some(path) } => path.clone(),
            _ => self.data_dir.join("store"),
        }
    }
}

/// The relay's own metrics.
#[derive(Clone)]
struct RelayMetrics {
    envelopes_stored: Counter,
    blobs_stored: Counter,
    blobs_erased: Counter,
    rooms_stored: Counter,
    store_errors: Counter,
    store_seconds: Histogram,
}

impl RelayMetrics {
    fn new(registry: &mut Registry) -> Self {
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
struct Mirror<R: RelayStore> {
    outbox: Outbox<SledStore>,
    store: Arc<R>,
    /// One flush at a time, so records go out in commit order.
    lock: tokio::sync::Mutex<()>,
    metrics: RelayMetrics,
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl<R: RelayStore> Mirror<R> {
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
    async fn flush_all(&self) -> Result<(), RelayError> {
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
trait MirrorStatus: Send + Sync {
    fn healthy(&self) -> Result<(), String>;
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
        let mirror = Arc::new(Mirror {
            outbox,
            store: Arc::new(store),
            lock: tokio::sync::Mutex::new(()),
            metrics,
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(None),
        });
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
                let task = tokio::spawn(serve_http(
                    listener,
                    node.clone(),
                    Arc::new(registry),
                    status.clone(),
                ));
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
    let replica = match key_file {
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
    Ok((replica, outbox))
}

/// The seed in a key file, or `None` if there is no such file.
fn read_key_file(path: &Path) -> Result<Option<[u8; 32]>, RelayError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RelayError::Io(format!("{}: {e}", path.display()))),
    };
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.trim().as_bytes())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .map(Some)
        .ok_or_else(|| {
            RelayError::Config(format!("key_file {}: not a key (64 hex digits)", path.display()))
        })
}

/// Writes a key file readable by its owner only: to a temporary file
/// beside it, flushed, then renamed into place, so a crash leaves either
/// no key file or a whole one.
fn write_key_file(path: &Path, seed: &[u8; 32]) -> Result<(), RelayError> {
    use std::io::Write as _;
    let io = |e: std::io::Error| RelayError::Io(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let partial = path.with_extension("partial");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&partial).map_err(io)?;
    writeln!(file, "{}", data_encoding::HEXLOWER.encode(seed)).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)
}

/// Rebuilds rooms the relay store holds and the replica does not (the
/// relay's local disk was lost): joins each, applies its governance, then
/// its envelopes, with their blobs, bucket by bucket.
async fn rebuild<R: RelayStore>(
    replica: Replica<RelayReplicaStore>,
    mirror: &Mirror<R>,
) -> Result<Replica<RelayReplicaStore>, RelayError> {
    let held: Vec<_> = replica.rooms().into_iter().map(|r| r.id).collect();
    let missing: Vec<Genesis> =
        mirror.store.rooms().await?.into_iter().filter(|g| !held.contains(&g.room_id())).collect();
    let mut replica = replica;
    for genesis in missing {
        let room = genesis.room_id();
        tracing::info!(%room, "rebuilding a room from the relay store");
        replica.join_room(genesis.as_bytes())?;
        // Governance first: the envelopes are judged by the heads they cite.
        let mut changes = Vec::new();
        for raw in mirror.store.governance(room).await? {
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
        for bucket in mirror.store.buckets(room).await? {
            let mut after = None;
            loop {
                let page = mirror.store.envelopes(room, bucket, after, REBUILD_PAGE).await?;
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
                        if let Some(blob) = mirror.store.blob(room, *hash).await? {
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

/// Serves `GET /metrics` (Prometheus text) and `GET /health`, one request
/// per connection.
async fn serve_http(
    listener: TcpListener,
    node: Node<RelayReplicaStore>,
    registry: Arc<Registry>,
    status: Arc<dyn MirrorStatus>,
) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { continue };
        let node = node.clone();
        let registry = registry.clone();
        let status = status.clone();
        tokio::spawn(async move {
            let Ok(Some(path)) = tokio::time::timeout(HTTP_READ_TIMEOUT, read_path(&mut socket))
                .await
                .unwrap_or(Ok(None))
            else {
                let _ =
                    respond(&mut socket, "400 Bad Request", "text/plain", "bad request\n").await;
                return;
            };
            let _ = match path.as_str() {
                "/metrics" => {
                    let mut text = node.metrics_text().await.unwrap_or_default();
                    // Both halves are OpenMetrics documents; keep one end marker.
                    if let Some(cut) = text.rfind("# EOF") {
                        text.truncate(cut);
                    }
                    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
                    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                    respond(&mut socket, "200 OK", kind, &text).await
                }
                "/health" => match status.healthy() {
                    Ok(()) => respond(&mut socket, "200 OK", "text/plain", "ok\n").await,
                    Err(e) => {
                        let body = format!("relay store unavailable: {e}\n");
                        respond(&mut socket, "503 Service Unavailable", "text/plain", &body).await
                    }
                },
                _ => respond(&mut socket, "404 Not Found", "text/plain", "not found\n").await,
            };
        });
    }
}

/// Reads a request head and returns the path of a `GET`, or `None`.
async fn read_path(socket: &mut tokio::net::TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut chunk).await?;
        if n == 0 || head.len() + n > MAX_HTTP_HEAD {
            return Ok(None);
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => Ok(Some(path.split('?').next().unwrap_or(path).to_owned())),
        _ => Ok(None),
    }
}

async fn respond(
    socket: &mut tokio::net::TcpStream,
    status: &str,
    kind: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}
