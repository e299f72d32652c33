//! Network benchmarks over real libp2p swarms on 127.0.0.1:
//!
//! - `gossip`: delivery latency (p50, p99) for 3 and 10 peers, gossip copies
//!   received and wire bytes per message, against plain gossipsub swarms;
//! - `partition`: time and bytes for four peers to converge after a
//!   partition heals, against the payloads each side lacked;
//! - `catchup-net`: one catch-up of K of N messages between two nodes,
//!   against the same payloads over a plain TCP socket.
//!
//! Concord runs as whole nodes (`concord_node::Node`: replica thread, swarm
//! actor, TCP with Noise and Yamux) in one tokio runtime; the baselines run
//! in the same process, on the same workload, in the same run. Each
//! benchmark sets its network up once; a run is one episode on it (a batch
//! of messages, a partition and its heal), except `catchup-net`, whose every
//! run starts two nodes from copies of prepared stores.
//!
//! One file over the house's 600 lines: the network benchmarks and their
//! raw gossipsub baseline must run the same workload, so they sit together.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};
use concord_core::{
    Clock, Delivery, GovChange, ManualClock, MessageId, Replica, RoomId, SledStore, Subscription,
    SyncStats, SystemClock, TimelineDiff, TimelineListener,
};
use concord_node::{Multiaddr, Node, NodeConfig, NodeEvent, PeerId, Room};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::swarm::SwarmEvent;
use libp2p::{identity, noise, tcp, yamux};
use prometheus_client::registry::Registry;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tempfile::TempDir;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::crypto::{Receiver, Sender};
use super::report::{thousands, Metric, Report, Unit};
use super::stats::{column, quantile, runs};
use super::stores::{open_store, ConcordRoom, GROUP};
use super::workload::{busy_span, Workload};
use super::{Ctx, Rooms};

/// Gossipsub's heartbeat as Concord's node sets it; the raw swarms use the
/// same, since it paces mesh repair and lazy gossip in both.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Largest gossip message, as in Concord's node.
const MAX_GOSSIP_BYTES: usize = 64 * 1024;
/// Time between two sends of a latency run: 50 messages a second, well
/// below what ten nodes on two cores absorb, so that latency is not queueing.
const PACE: Duration = Duration::from_millis(20);
/// After the last copy arrived, wait this long before reading the traffic
/// counters. Concord confirms a gossiped burst by a catch-up 300 ms after it
/// (`NodeConfig::confirm_delay`): the last one starts at most 300 ms after
/// the last send and takes a few milliseconds, and its bytes belong to the
/// messages. The raw swarms get the same wait.
const SETTLE: Duration = Duration::from_millis(400);
/// How long a run waits for every copy before counting the rest as lost.
const DRAIN: Duration = Duration::from_secs(10);
/// How long setup steps (connections, catch-ups, heals) may take.
const SETUP_WAIT: Duration = Duration::from_secs(30);
/// Periodic catch-up and presence are pushed past the end of any run: they
/// would add traffic that belongs to no message.
const QUIET: Duration = Duration::from_secs(3600);
/// Warm-up rounds (each peer sends one message) tried before giving up on
/// the mesh, and how long one round may take to arrive everywhere.
const WARM_ROUNDS: usize = 20;
const ROUND_WAIT: Duration = Duration::from_secs(2);
/// Consecutive warm-up rounds that must arrive everywhere in time.
const WARM_GOOD_ROUNDS: usize = 2;
/// Size of a raw warm-up message.
const WARM_BYTES: usize = 200;
/// Raw sequence numbers of warm-up messages start here, far above any
/// measured message's.
const WARM_SEQ: u64 = 1 << 62;
/// Network sizes of `gossip`.
const GOSSIP_PEERS: [usize; 2] = [3, 10];
/// Peers of `partition`: two groups of two.
const PARTITION_PEERS: usize = 4;
/// Messages `catchup-net`'s receiver lacks.
const CATCHUP_MISSING: [usize; 3] = [1, 100, 1_000];
/// Commands waiting for a raw swarm task; the benchmark sends one at a time.
const RAW_COMMAND_QUEUE: usize = 64;
/// Prefix of the raw swarms' gossipsub metrics.
const RAW_GOSSIP_PREFIX: &str = "raw_gossip";

/// Random streams of the network benchmarks, numbered above the workload's
/// (`workload::Stream`) so that they never share one.
#[derive(Clone, Copy)]
enum NetStream {
    /// Device and network keys.
    Keys = 16,
    /// Filler bytes of raw gossip payloads.
    Payloads = 17,
}

fn net_rng(seed: u64, stream: NetStream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream as u64);
    rng
}

fn seeds(rng: &mut ChaCha8Rng, n: usize) -> Vec<[u8; 32]> {
    (0..n)
        .map(|_| {
            let mut s = [0u8; 32];
            rng.fill_bytes(&mut s);
            s
        })
        .collect()
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Node settings for the benchmarks: no mDNS (unrelated nodes on one machine
/// must not find each other), and no periodic catch-up or presence.
fn node_config() -> NodeConfig {
    NodeConfig::default().mdns(false).sync_interval(QUIET).presence_interval(QUIET)
}

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr")
}

/// Who dials whom: every pair for up to four peers; for more, a ring with
/// chords (peer i dials i+1 and i+3), so every peer has four neighbours,
/// all of them in its gossip mesh (gossipsub keeps 5 to 12), and a message
/// needs up to three hops.
fn topology(n: usize) -> Vec<(usize, usize)> {
    if n <= 4 {
        (0..n).flat_map(|j| (0..j).map(move |i| (j, i))).collect()
    } else {
        (0..n).flat_map(|i| [(i, (i + 1) % n), (i, (i + 3) % n)]).collect()
    }
}

fn degrees(n: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    let mut out = vec![0; n];
    for &(i, j) in edges {
        out[i] += 1;
        out[j] += 1;
    }
    out
}

/// Traffic counters summed over a network's peers.
#[derive(Clone, Copy, Default, Debug)]
struct Traffic {
    /// Bytes written to connections (after Noise and Yamux).
    sent: u64,
    /// Gossip messages received, duplicates included.
    gossip: u64,
}

impl Traffic {
    fn since(self, before: Traffic) -> Traffic {
        Traffic {
            sent: self.sent.saturating_sub(before.sent),
            gossip: self.gossip.saturating_sub(before.gossip),
        }
    }
}

impl std::iter::Sum for Traffic {
    fn sum<I: Iterator<Item = Traffic>>(iter: I) -> Traffic {
        iter.fold(Traffic::default(), |a, b| Traffic {
            sent: a.sent + b.sent,
            gossip: a.gossip + b.gossip,
        })
    }
}

// ----- Concord nodes ---------------------------------------------------------

/// Records when each message first appeared readable in one peer's
/// timeline (in an encrypted room, not while it waits for its key).
/// Called on the replica thread after the change is durable, which is when
/// a user would see it.
#[derive(Default)]
struct Arrivals(Mutex<HashMap<MessageId, Instant>>);

impl TimelineListener for Arrivals {
    fn on_diffs(&self, _room: &RoomId, diffs: &[TimelineDiff]) {
        let now = Instant::now();
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for diff in diffs {
            if let TimelineDiff::Insert(m) | TimelineDiff::Update(m) = diff {
                if !m.waiting_for_key {
                    seen.entry(m.id).or_insert(now);
                }
            }
        }
    }
}

impl Arrivals {
    fn at(&self, id: &MessageId) -> Option<Instant> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(id).copied()
    }
}

/// One Concord node in a benchmark network, with the shared room.
struct ConcordPeer {
    node: Node,
    room: Room<SledStore>,
    addr: Multiaddr,
    arrivals: Arc<Arrivals>,
    _subscription: Subscription,
    _dir: TempDir,
}

/// Concord nodes sharing one room.
struct ConcordNet {
    peers: Vec<ConcordPeer>,
    /// Envelopes already accounted for by [`ConcordNet::new_deliveries`].
    seen: HashSet<[u8; 32]>,
}

impl ConcordNet {
    /// Starts `n` nodes on fresh stores, listening on loopback; the first
    /// creates a room of the kind `rooms` names and the others join it
    /// (without connecting). In an encrypted room every node ends up holding
    /// every member's device keys, as first catch-ups would leave them.
    async fn start(n: usize, seed: u64, config: NodeConfig, rooms: Rooms) -> Result<Self> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let keys = seeds(&mut net_rng(seed, NetStream::Keys), n);
        let mut nodes = Vec::with_capacity(n);
        for key in keys {
            let dir = tempfile::tempdir()?;
            let replica = Replica::open_with_seed(open_store(dir.path())?, clock.clone(), key)?;
            let node = Node::start(replica, clock.clone(), config.clone())?;
            let addr = node.listen(loopback()).await?;
            nodes.push((node, addr, dir));
        }
        let room = nodes[0].0.create_room_opts("bench", rooms.options()).await?.id();
        let genesis = nodes[0]
            .0
            .replica()
            .try_call(move |r| Ok(r.genesis(&room)?.as_bytes().to_vec()))
            .await?;
        // Joiners hold the room's governance too, as a first catch-up would
        // bring it: messages cite it.
        let governance =
            nodes[0].0.replica().try_call(move |r| r.governance_since(&room, &[])).await?;
        let mut peers = Vec::with_capacity(n);
        for (node, addr, dir) in nodes {
            let (g, changes) = (genesis.clone(), governance.clone());
            node.replica()
                .try_call(move |r| {
                    r.join_room(&g)?;
                    r.apply_governance(&room, changes).map(drop)
                })
                .await?;
            node.join(room).await?;
            let room = node.room(room).await?;
            let arrivals = Arc::new(Arrivals::default());
            let subscription = room.subscribe(arrivals.clone()).await?;
            peers.push(ConcordPeer {
                node,
                room,
                addr,
                arrivals,
                _subscription: subscription,
                _dir: dir,
            });
        }
        if rooms == Rooms::Encrypted {
            // Each joiner's published device keys reach the host, then the
            // host's whole governance reaches every joiner.
            let host = peers[0].node.replica();
            for p in &peers[1..] {
                let heads = host.try_call(move |r| r.governance_heads(&room)).await?;
                let back =
                    p.node.replica().try_call(move |r| r.governance_since(&room, &heads)).await?;
                host.try_call(move |r| r.apply_governance(&room, back).map(drop)).await?;
            }
            for p in &peers[1..] {
                let replica = p.node.replica();
                let heads = replica.try_call(move |r| r.governance_heads(&room)).await?;
                let changes = host.try_call(move |r| r.governance_since(&room, &heads)).await?;
                replica.try_call(move |r| r.apply_governance(&room, changes).map(drop)).await?;
            }
        }
        Ok(Self { peers, seen: HashSet::new() })
    }

    /// Dials `edges` and waits until every peer has its neighbours.
    async fn connect(&self, edges: &[(usize, usize)]) -> Result<()> {
        for &(i, j) in edges {
            self.peers[i].node.dial(self.peers[j].addr.clone()).await?;
        }
        let want = degrees(self.peers.len(), edges);
        let start = Instant::now();
        loop {
            let mut ok = true;
            for (p, &want) in self.peers.iter().zip(&want) {
                ok &= p.node.peers().await?.len() >= want;
            }
            if ok {
                return Ok(());
            }
            ensure!(start.elapsed() < SETUP_WAIT, "Concord peers did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Envelopes of the room that no earlier call returned, from every
    /// peer's replica, in stamp order.
    async fn new_deliveries(&mut self) -> Result<Vec<Delivery>> {
        let mut fresh: HashMap<[u8; 32], Delivery> = HashMap::new();
        for p in &self.peers {
            let room = p.room.id();
            for d in p.node.replica().try_call(move |r| r.deliveries(&room)).await? {
                let hash = d.envelope.hash();
                if !self.seen.contains(&hash) {
                    fresh.entry(hash).or_insert(d);
                }
            }
        }
        self.seen.extend(fresh.keys().copied());
        let mut out: Vec<Delivery> = fresh.into_values().collect();
        out.sort_by_key(|d| d.envelope.hlc());
        Ok(out)
    }

    async fn shutdown(self) -> Result<()> {
        for p in self.peers {
            p.node.shutdown().await?;
        }
        Ok(())
    }
}

// ----- raw gossipsub swarms ----------------------------------------------------

enum RawCommand {
    Dial(Multiaddr),
    Publish(Vec<u8>),
    Peers(oneshot::Sender<usize>),
    Traffic(oneshot::Sender<Traffic>),
}

/// A plain gossipsub swarm (TCP, Noise, Yamux) on its own task. Payloads
/// start with an 8-byte sequence number; receipts are recorded by it. In
/// an encrypted room the payload carries the sender's encrypted message
/// ([`encrypted_payload`]), and a receipt counts once it verified and
/// decrypted.
struct RawPeer {
    commands: mpsc::Sender<RawCommand>,
    addr: Multiaddr,
    arrivals: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl RawPeer {
    async fn start(
        secret: [u8; 32],
        topic: IdentTopic,
        mut receivers: Option<HashMap<usize, Receiver>>,
    ) -> Result<Self> {
        let mut secret = secret;
        let keypair = identity::Keypair::ed25519_from_bytes(&mut secret)?;
        let mut metrics = Registry::default();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
            .with_bandwidth_metrics(&mut metrics)
            .with_behaviour(|key| {
                // Concord's settings, less its own: no manual validation
                // (a raw swarm forwards at once) and the default message id.
                let config = gossipsub::ConfigBuilder::default()
                    .validation_mode(ValidationMode::Strict)
                    .max_transmit_size(MAX_GOSSIP_BYTES)
                    .heartbeat_interval(HEARTBEAT)
                    .build()
                    .map_err(|e| e.to_string())?;
                let behaviour: gossipsub::Behaviour =
                    gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config)?
                        .with_metrics(
                            metrics.sub_registry_with_prefix(RAW_GOSSIP_PREFIX),
                            gossipsub::MetricsConfig::default(),
                        );
                Ok(behaviour)
            })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        swarm.behaviour_mut().subscribe(&topic)?;
        swarm.listen_on(loopback())?;
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        let (commands, mut inbox) = mpsc::channel(RAW_COMMAND_QUEUE);
        let arrivals = Arc::new(Mutex::new(HashMap::new()));
        let seen = arrivals.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    command = inbox.recv() => match command {
                        None => return,
                        Some(RawCommand::Dial(addr)) => {
                            let _ = swarm.dial(addr);
                        }
                        Some(RawCommand::Publish(data)) => {
                            // Errors (no peers yet) show as lost copies.
                            let _ = swarm.behaviour_mut().publish(topic.clone(), data);
                        }
                        Some(RawCommand::Peers(reply)) => {
                            let _ = reply.send(swarm.connected_peers().count());
                        }
                        Some(RawCommand::Traffic(reply)) => {
                            let _ = reply.send(registry_traffic(&metrics, RAW_GOSSIP_PREFIX));
                        }
                    },
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) =
                            event
                        {
                            let readable = match &mut receivers {
                                None => true,
                                Some(receivers) => open_payload(receivers, &message.data).is_some(),
                            };
                            let now = Instant::now();
                            if let Some(seq) = sequence(&message.data).filter(|_| readable) {
                                seen.lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .entry(seq)
                                    .or_insert(now);
                            }
                        }
                    }
                }
            }
        });
        Ok(Self { commands, addr, arrivals })
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> RawCommand) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| anyhow!("raw swarm stopped"))?;
        Ok(rx.await?)
    }

    async fn tell(&self, command: RawCommand) -> Result<()> {
        self.commands.send(command).await.map_err(|_| anyhow!("raw swarm stopped"))
    }
}

/// The sequence number a raw payload starts with.
fn sequence(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

/// A raw payload of an encrypted room: `seq` ‖ sender u8 ‖ length u32 ‖
/// the sender's encrypted `body` ([`Sender::encrypt`]), then filler up to
/// `size` bytes.
fn encrypted_payload(
    seq: u64,
    from: usize,
    body: &str,
    sender: &mut Sender,
    size: usize,
) -> Vec<u8> {
    let travel = sender.encrypt(body.as_bytes());
    let mut out = seq.to_be_bytes().to_vec();
    out.push(u8::try_from(from).unwrap_or(u8::MAX));
    out.extend_from_slice(&u32::try_from(travel.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&travel);
    if out.len() < size {
        out.resize(size, 0);
    }
    out
}

/// Verifies and decrypts an [`encrypted_payload`] with its sender's
/// session, if this peer holds it.
fn open_payload(receivers: &mut HashMap<usize, Receiver>, payload: &[u8]) -> Option<Vec<u8>> {
    let from = usize::from(*payload.get(8)?);
    let len = u32::from_be_bytes(payload.get(9..13)?.try_into().ok()?) as usize;
    let travel = payload.get(13..13 + len)?;
    receivers.get_mut(&from)?.decrypt(travel).ok()
}

/// A raw payload of `size` bytes (at least 8): `seq`, then filler.
fn raw_payload(seq: u64, size: usize, filler: &mut ChaCha8Rng) -> Vec<u8> {
    let mut out = vec![0u8; size.max(8)];
    out[..8].copy_from_slice(&seq.to_be_bytes());
    filler.fill_bytes(&mut out[8..]);
    out
}

/// Bytes sent and gossip messages received, from a registry holding
/// libp2p's bandwidth metrics and gossipsub metrics under `gossip_prefix`;
/// read the way `concord_node`'s `NetStats` reads its own.
fn registry_traffic(metrics: &Registry, gossip_prefix: &str) -> Traffic {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, metrics).is_err() {
        return Traffic::default();
    }
    let received = format!("{gossip_prefix}_topic_msg_recv_counts_unfiltered_total");
    let mut out = Traffic::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        if name.starts_with("libp2p_bandwidth_bytes_total") && name.contains("Outbound") {
            out.sent += value as u64;
        } else if name.starts_with(&received) {
            out.gossip += value as u64;
        }
    }
    out
}

/// Plain gossipsub swarms on one topic; in an encrypted room each with a
/// Megolm session whose key every other peer holds.
struct RawNet {
    peers: Vec<RawPeer>,
    senders: Option<Vec<Mutex<Sender>>>,
}

impl RawNet {
    async fn start(n: usize, seed: u64, topic: &str, rooms: Rooms) -> Result<Self> {
        // Keys from their own draw, so raw and Concord peers never share one.
        let mut rng = net_rng(seed, NetStream::Keys);
        let _concord_keys = seeds(&mut rng, n);
        let senders: Option<Vec<Sender>> = (rooms == Rooms::Encrypted)
            .then(|| (0..n).map(|i| Sender::new(seed.wrapping_add(i as u64))).collect());
        let mut peers = Vec::with_capacity(n);
        for (i, key) in seeds(&mut rng, n).into_iter().enumerate() {
            let receivers = senders.as_ref().map(|all| {
                all.iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(j, s)| (j, s.receiver()))
                    .collect()
            });
            peers.push(RawPeer::start(key, IdentTopic::new(topic), receivers).await?);
        }
        let senders = senders.map(|all| all.into_iter().map(Mutex::new).collect());
        Ok(Self { peers, senders })
    }

    async fn connect(&self, edges: &[(usize, usize)]) -> Result<()> {
        for &(i, j) in edges {
            self.peers[i].tell(RawCommand::Dial(self.peers[j].addr.clone())).await?;
        }
        let want = degrees(self.peers.len(), edges);
        let start = Instant::now();
        loop {
            let mut ok = true;
            for (p, &want) in self.peers.iter().zip(&want) {
                ok &= p.ask(RawCommand::Peers).await? >= want;
            }
            if ok {
                return Ok(());
            }
            ensure!(start.elapsed() < SETUP_WAIT, "raw swarms did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ----- latency runs, on either network ---------------------------------------------

/// One message of a latency run: who sends it, Concord's text, and the raw
/// payload (its sequence number first).
struct Planned {
    from: usize,
    body: String,
    payload: Vec<u8>,
}

/// What a latency run needs of a network.
trait GossipNet {
    /// How a sent message is recognised on arrival.
    type Key: Copy + Eq + Hash;
    fn peer_count(&self) -> usize;
    /// Sends one message from peer `from`; returns when the send call does.
    async fn send(&self, from: usize, message: &Planned) -> Result<Self::Key>;
    /// When `key` arrived at `peer`, if it has.
    fn arrived(&self, peer: usize, key: &Self::Key) -> Option<Instant>;
    /// Counters summed over the peers.
    async fn traffic(&self) -> Result<Traffic>;
}

impl GossipNet for ConcordNet {
    type Key = MessageId;

    fn peer_count(&self) -> usize {
        self.peers.len()
    }

    async fn send(&self, from: usize, message: &Planned) -> Result<MessageId> {
        Ok(self.peers[from].room.send(&message.body).await?)
    }

    fn arrived(&self, peer: usize, key: &MessageId) -> Option<Instant> {
        self.peers[peer].arrivals.at(key)
    }

    async fn traffic(&self) -> Result<Traffic> {
        let mut out = Vec::with_capacity(self.peers.len());
        for p in &self.peers {
            let s = p.node.stats().await?;
            out.push(Traffic { sent: s.bytes_sent, gossip: s.gossip_received });
        }
        Ok(out.into_iter().sum())
    }
}

impl GossipNet for RawNet {
    type Key = u64;

    fn peer_count(&self) -> usize {
        self.peers.len()
    }

    async fn send(&self, from: usize, message: &Planned) -> Result<u64> {
        let seq = sequence(&message.payload).ok_or_else(|| anyhow!("payload without sequence"))?;
        let payload = match &self.senders {
            None => message.payload.clone(),
            Some(senders) => {
                let mut sender = senders[from].lock().unwrap_or_else(|e| e.into_inner());
                encrypted_payload(seq, from, &message.body, &mut sender, message.payload.len())
            }
        };
        self.peers[from].tell(RawCommand::Publish(payload)).await?;
        Ok(seq)
    }

    fn arrived(&self, peer: usize, key: &u64) -> Option<Instant> {
        self.peers[peer].arrivals.lock().unwrap_or_else(|e| e.into_inner()).get(key).copied()
    }

    async fn traffic(&self) -> Result<Traffic> {
        let mut out = Vec::with_capacity(self.peers.len());
        for p in &self.peers {
            out.push(p.ask(RawCommand::Traffic).await?);
        }
        Ok(out.into_iter().sum())
    }
}

/// Whether every message of `sent` has arrived at every peer but its sender.
fn all_arrived<N: GossipNet>(net: &N, sent: &[(usize, N::Key)]) -> bool {
    sent.iter().all(|(from, key)| {
        (0..net.peer_count()).all(|p| p == *from || net.arrived(p, key).is_some())
    })
}

/// Polls until [`all_arrived`] or `wait` has passed; returns whether all did.
async fn until_arrived<N: GossipNet>(net: &N, sent: &[(usize, N::Key)], wait: Duration) -> bool {
    let start = Instant::now();
    loop {
        if all_arrived(net, sent) {
            return true;
        }
        if start.elapsed() > wait {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Forms the gossip mesh: rounds in which every peer sends one message,
/// until [`WARM_GOOD_ROUNDS`] rounds in a row reached everyone within
/// [`ROUND_WAIT`]. Returns how long the first round took to reach every
/// peer (from its first send to its last arrival), if it did in time: the
/// first messages after connecting, before gossipsub's heartbeat has
/// grafted the mesh.
async fn warm_up<N: GossipNet>(net: &N, what: &str) -> Result<Option<Duration>> {
    let n = net.peer_count();
    let mut good = 0;
    let mut first = None;
    for round in 0..WARM_ROUNDS {
        let start = Instant::now();
        let mut sent = Vec::with_capacity(n);
        for from in 0..n {
            let seq = WARM_SEQ + (round * n + from) as u64;
            let mut payload = vec![0u8; WARM_BYTES];
            payload[..8].copy_from_slice(&seq.to_be_bytes());
            let message = Planned { from, body: format!("warm-up {round} from {from}"), payload };
            sent.push((from, net.send(from, &message).await?));
        }
        if until_arrived(net, &sent, ROUND_WAIT).await {
            if round == 0 {
                first = last_arrival(net, &sent).map(|at| at.saturating_duration_since(start));
            }
            good += 1;
            if good == WARM_GOOD_ROUNDS {
                eprintln!(
                    "{what}, {n} peers: mesh warm after {} rounds; first round {}",
                    round + 1,
                    first.map_or("not in time".into(), |d| format!("{d:.1?}"))
                );
                tokio::time::sleep(SETTLE).await;
                return Ok(first);
            }
        } else {
            good = 0;
        }
    }
    bail!("{what}: the gossip mesh did not form in {WARM_ROUNDS} warm-up rounds")
}

/// The latest arrival of `sent` at any peer but its sender.
fn last_arrival<N: GossipNet>(net: &N, sent: &[(usize, N::Key)]) -> Option<Instant> {
    sent.iter()
        .flat_map(|(from, key)| {
            (0..net.peer_count()).filter(move |p| p != from).filter_map(|p| net.arrived(p, key))
        })
        .max()
}

/// What one latency run measured.
struct LatencyRun {
    /// Seconds from just before each send to the arrival at each other peer.
    latencies: Vec<f64>,
    /// Copies (message × receiving peer) that did not arrive within [`DRAIN`].
    lost: usize,
    /// Traffic from the first send until [`SETTLE`] after the last arrival.
    traffic: Traffic,
}

/// Sends `plan` at [`PACE`], waits for every copy, and measures.
async fn latency_run<N: GossipNet>(net: &N, plan: &[Planned]) -> Result<LatencyRun> {
    let before = net.traffic().await?;
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = Vec::with_capacity(plan.len());
    let mut started = Vec::with_capacity(plan.len());
    for message in plan {
        tick.tick().await;
        let t0 = Instant::now();
        sent.push((message.from, net.send(message.from, message).await?));
        started.push(t0);
    }
    until_arrived(net, &sent, DRAIN).await;
    tokio::time::sleep(SETTLE).await;
    let traffic = net.traffic().await?.since(before);
    let mut latencies = Vec::with_capacity(plan.len() * net.peer_count());
    let mut lost = 0;
    for ((from, key), t0) in sent.iter().zip(started) {
        for peer in (0..net.peer_count()).filter(|p| p != from) {
            match net.arrived(peer, key) {
                Some(at) => latencies.push(at.saturating_duration_since(t0).as_secs_f64()),
                None => lost += 1,
            }
        }
    }
    ensure!(!latencies.is_empty(), "no message arrived anywhere");
    Ok(LatencyRun { latencies, lost, traffic })
}

// ----- gossip ------------------------------------------------------------------

/// Workload: for 3 and 10 peers on loopback (3: every pair connected; 10: a
/// ring with chords, four neighbours each), after warm-up rounds formed the
/// mesh, `gossip_messages` messages of 20–200 bytes of text per run, from
/// rotating senders, one every 20 ms with `Room::send`. Latency runs from
/// just before the send to the message's insert into each other peer's
/// timeline (after its durable apply); p50 and p99 over the copies of one
/// run. Traffic counters give gossip copies received per message per peer
/// and bytes sent by all peers per message.
/// Baseline: plain libp2p gossipsub swarms (TCP, Noise, Yamux, signed
/// messages, heartbeat 500 ms, same topology and topic name, no
/// validation hold) publishing payloads of the sizes of that run's Concord
/// deliveries; latency from publish to the receive event.
pub fn run_gossip(ctx: &Ctx) -> Result<Report> {
    run_gossip_in(ctx, Rooms::Unencrypted)
}

/// `gossip-e2ee`: the same in an end-to-end encrypted room whose members
/// hold each other's device keys (Concord shares its room keys itself, over
/// the same gossip, during the warm-up rounds); a copy counts once it is
/// readable. Baseline: the raw swarms with the same cryptography, each
/// sender Megolm-encrypting and signing the text as it publishes
/// (`crypto.rs`), each receiver verifying and decrypting before it counts
/// the copy.
pub fn run_gossip_e2ee(ctx: &Ctx) -> Result<Report> {
    run_gossip_in(ctx, Rooms::Encrypted)
}

fn run_gossip_in(ctx: &Ctx, rooms: Rooms) -> Result<Report> {
    let name = rooms.name("gossip", "gossip-e2ee");
    let encrypted = rooms == Rooms::Encrypted;
    let rt = runtime()?;
    let m = ctx.sizes.gossip_messages;
    let w = Workload::generate(ctx.seed, m, busy_span(m));
    let mut filler = net_rng(ctx.seed, NetStream::Payloads);
    let mut metrics = Vec::new();
    let mut lost = Vec::new();
    let mut payload_mean = Vec::new();
    let mut firsts = Vec::new();
    for n in GOSSIP_PEERS {
        let edges = topology(n);
        let (mut concord, raw) = rt.block_on(async {
            let mut concord = ConcordNet::start(n, ctx.seed, node_config(), rooms).await?;
            concord.connect(&edges).await?;
            let topic = format!("concord/room/{}", concord.peers[0].room.id());
            let raw = RawNet::start(n, ctx.seed, &topic, rooms).await?;
            raw.connect(&edges).await?;
            let first_c = warm_up(&concord, "Concord").await?;
            let first_r = warm_up(&raw, "raw gossipsub").await?;
            let show = |d: Option<Duration>| {
                d.map_or("more than 2 s".to_owned(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
            };
            firsts.push(format!(
                "{} (Concord) and {} (raw) for {n} peers",
                show(first_c),
                show(first_r)
            ));
            concord.new_deliveries().await?;
            anyhow::Ok((concord, raw))
        })?;
        let mut lost_here = [0usize; 2];
        let mut run = 0u64;
        let rows = runs(&format!("{name}, {n} peers"), ctx.runs, || {
            rt.block_on(async {
                let plan: Vec<Planned> = w
                    .messages
                    .iter()
                    .enumerate()
                    .map(|(i, msg)| Planned {
                        from: i % n,
                        body: msg.body.clone(),
                        payload: Vec::new(),
                    })
                    .collect();
                let c = latency_run(&concord, &plan).await?;
                let sizes: Vec<usize> =
                    concord.new_deliveries().await?.iter().map(|d| d.to_bytes().len()).collect();
                if sizes.len() != plan.len() {
                    eprintln!(
                        "gossip: {} new envelopes for {} messages; raw sizes cycle over them",
                        sizes.len(),
                        plan.len()
                    );
                }
                ensure!(!sizes.is_empty(), "no envelope was sent");
                let raw_plan: Vec<Planned> = plan
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let seq = run * plan.len() as u64 + i as u64;
                        let size = sizes[i % sizes.len()];
                        Planned {
                            from: p.from,
                            body: p.body.clone(),
                            payload: raw_payload(seq, size, &mut filler),
                        }
                    })
                    .collect();
                run += 1;
                let r = latency_run(&raw, &raw_plan).await?;
                lost_here[0] += c.lost;
                lost_here[1] += r.lost;
                let copies = (plan.len() * (n - 1)) as f64;
                let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
                Ok([
                    quantile(&c.latencies, 0.5),
                    quantile(&r.latencies, 0.5),
                    quantile(&c.latencies, 0.99),
                    quantile(&r.latencies, 0.99),
                    c.traffic.gossip as f64 / copies,
                    r.traffic.gossip as f64 / copies,
                    c.traffic.sent as f64 / plan.len() as f64,
                    r.traffic.sent as f64 / plan.len() as f64,
                    mean,
                ])
            })
        })?;
        rt.block_on(concord.shutdown())?;
        drop(raw);
        let col = |i| column(&rows, i);
        metrics.push(Metric::compared(
            format!("p50 latency, {n} peers"),
            Unit::Millis,
            &col(0),
            &col(1),
        ));
        metrics.push(Metric::compared(
            format!("p99 latency, {n} peers"),
            Unit::Millis,
            &col(2),
            &col(3),
        ));
        metrics.push(Metric::compared(
            format!("gossip copies received per message and peer, {n} peers"),
            Unit::Ratio,
            &col(4),
            &col(5),
        ));
        metrics.push(Metric::compared(
            format!("bytes sent per message, all {n} peers"),
            Unit::Bytes,
            &col(6),
            &col(7),
        ));
        let mean = col(8);
        metrics.push(Metric::side_by_side(
            format!("payload (delivery) bytes per message, {n} peers"),
            Unit::Bytes,
            &mean,
            &mean,
        ));
        payload_mean.extend(mean);
        lost.push((n, lost_here));
    }
    let lost_text = if lost.iter().all(|(_, l)| l == &[0, 0]) {
        "every copy arrived in every run".to_owned()
    } else {
        let parts: Vec<String> = lost
            .iter()
            .map(|(n, [c, r])| format!("{n} peers: {c} Concord and {r} raw copies lost"))
            .collect();
        format!("copies that did not arrive within {} s: {}", DRAIN.as_secs(), parts.join("; "))
    };
    Ok(Report {
        name,
        workload: format!(
            "3 and 10 peers on 127.0.0.1 (3: every pair connected; 10: a ring with chords, \
             peer i dialing i+1 and i+3, four neighbours each) in one {} room, the mesh \
             formed by warm-up rounds (each peer sends one message; the first round, sent as \
             soon as the connections were up, took {} to reach every peer); per run {m} \
             messages of 20–200 bytes of text from rotating senders, one every {} ms with \
             Room::send; latency from just before the send to the insert into each other \
             peer's timeline{}, p50 and p99 over the copies of a run; traffic from the first \
             send until {} ms after the last arrival; {lost_text}",
            if encrypted { "end-to-end encrypted" } else { "unencrypted" },
            firsts.join(", "),
            PACE.as_millis(),
            if encrypted { " readable (its room key there)" } else { "" },
            SETTLE.as_millis()
        ),
        baseline_name: if encrypted {
            "raw gossipsub + the same cryptography"
        } else {
            "raw gossipsub"
        },
        baseline: format!(
            "plain libp2p gossipsub swarms (TCP, Noise, Yamux; signed messages, heartbeat \
             500 ms, no validation hold), same topology and topic name, payloads of the sizes \
             of the same run's Concord deliveries{}; latency from publish to the receive event{}",
            if encrypted {
                " carrying the text Megolm-encrypted and Ed25519-signed by the sender as it \
                 publishes (vodozemac and ed25519-dalek, every receiver holding each \
                 sender's session)"
            } else {
                ""
            },
            if encrypted { " after verification and decryption" } else { "" },
        ),
        metrics,
        goals: Vec::new(),
    })
}

// ----- partition -----------------------------------------------------------------

/// Blocks (or unblocks) every pair between the two halves, on both sides.
async fn split(net: &ConcordNet, on: bool) -> Result<()> {
    let half = net.peers.len() / 2;
    for a in 0..half {
        for b in half..net.peers.len() {
            let (pa, pb) = (&net.peers[a].node, &net.peers[b].node);
            if on {
                pa.block(pb.peer_id()).await?;
                pb.block(pa.peer_id()).await?;
            } else {
                pa.unblock(pb.peer_id()).await?;
                pb.unblock(pa.peer_id()).await?;
            }
        }
    }
    Ok(())
}

/// Waits until every peer has exactly `want` connected peers.
async fn until_peers(net: &ConcordNet, want: usize) -> Result<()> {
    let start = Instant::now();
    loop {
        let mut ok = true;
        for p in &net.peers {
            ok &= p.node.peers().await?.len() == want;
        }
        if ok {
            return Ok(());
        }
        ensure!(start.elapsed() < SETUP_WAIT, "peers did not reach {want} connections");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends `bodies` from the peers of `group` in turn; returns the ids.
async fn write_group(
    net: &ConcordNet,
    group: [usize; 2],
    bodies: &[String],
) -> Result<Vec<(usize, MessageId)>> {
    let mut out = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.iter().enumerate() {
        let from = group[i % 2];
        out.push((from, net.peers[from].room.send(body).await?));
    }
    Ok(out)
}

/// Workload: four peers, every pair connected, mesh formed by warm-up. Per
/// run: every pair across two halves {0, 1} and {2, 3} is blocked on both
/// sides (connections close); each half writes `partition_messages`
/// messages of 20–200 bytes of text by gossip within the half; then the
/// blocks are lifted and each peer of the first half dials each of the
/// second. Heal time runs from just before the unblock to the last of the
/// missing messages' inserts into the four timelines; bytes are all peers'
/// from the unblock until every catch-up the new connections started has
/// finished. The four snapshots are then checked to be equal. Confirming
/// catch-ups after gossip are off (they would only run within a half).
/// Baseline: there is no natural raw baseline for healing. Bytes are
/// compared with the payload each peer lacked (the other half's deliveries,
/// summed over the four peers); time with moving exactly that payload over
/// four plain loopback TCP connections at once, length-prefixed, receivers
/// applying nothing.
pub fn run_partition(ctx: &Ctx) -> Result<Report> {
    let rt = runtime()?;
    let k = ctx.sizes.partition_messages;
    let w = Workload::generate(ctx.seed, 2 * k, busy_span(2 * k));
    let bodies: Vec<String> = w.messages.iter().map(|m| m.body.clone()).collect();
    let (left, right) = bodies.split_at(k);
    let mut net = rt.block_on(async {
        let config = node_config().confirm_delay(QUIET);
        let mut net =
            ConcordNet::start(PARTITION_PEERS, ctx.seed, config, Rooms::Unencrypted).await?;
        net.connect(&topology(PARTITION_PEERS)).await?;
        warm_up(&net, "Concord").await?;
        net.new_deliveries().await?;
        anyhow::Ok(net)
    })?;
    let rows = runs("partition", ctx.runs, || {
        rt.block_on(async {
            split(&net, true).await?;
            until_peers(&net, 1).await?;
            let (a, b) =
                tokio::join!(write_group(&net, [0, 1], left), write_group(&net, [2, 3], right));
            let (a, b) = (a?, b?);
            ensure!(
                until_arrived_in(&net, &a, &[0, 1], SETUP_WAIT).await,
                "half A did not converge"
            );
            ensure!(
                until_arrived_in(&net, &b, &[2, 3], SETUP_WAIT).await,
                "half B did not converge"
            );
            let fresh = net.new_deliveries().await?;
            let authors_a = [net.peers[0].node.author(), net.peers[1].node.author()];
            let (from_a, from_b): (Vec<Delivery>, Vec<Delivery>) =
                fresh.into_iter().partition(|d| authors_a.contains(&d.envelope.author()));
            ensure!(
                from_a.len() == k && from_b.len() == k,
                "halves wrote {} and {} envelopes",
                from_a.len(),
                from_b.len()
            );

            let mut events: Vec<_> = net.peers.iter().map(|p| p.node.events()).collect();
            let before = net.traffic().await?;
            let t0 = Instant::now();
            split(&net, false).await?;
            for a in 0..PARTITION_PEERS / 2 {
                for b in PARTITION_PEERS / 2..PARTITION_PEERS {
                    net.peers[a].node.dial(net.peers[b].addr.clone()).await?;
                }
            }
            let all: Vec<(usize, MessageId)> = a.iter().chain(&b).copied().collect();
            ensure!(until_arrived(&net, &all, SETUP_WAIT).await, "the partition did not heal");
            let healed = all
                .iter()
                .flat_map(|(_, id)| net.peers.iter().filter_map(|p| p.arrivals.at(id)))
                .max()
                .ok_or_else(|| anyhow!("no arrival"))?;
            let heal = healed.saturating_duration_since(t0).as_secs_f64();
            // Every peer starts a catch-up with each peer of the other half
            // when they connect; the bytes count until all have finished.
            let half = PARTITION_PEERS / 2;
            let mut sessions = Vec::new();
            for (i, events) in events.iter_mut().enumerate() {
                let others = if i < half { half..PARTITION_PEERS } else { 0..half };
                let others: Vec<PeerId> = others.map(|j| net.peers[j].node.peer_id()).collect();
                sessions.extend(until_synced(events, &others).await?);
            }
            let bytes = net.traffic().await?.since(before).sent as f64;
            let sum = |f: fn(&SyncStats) -> u64| sessions.iter().map(f).sum::<u64>();
            eprintln!(
                "partition: {} catch-ups; initiators sent {} envelopes and applied {} new; \
                 {} bytes of sync messages; {} envelopes were lacking",
                sessions.len(),
                sum(|s| s.envelopes_sent),
                sum(|s| s.envelopes_applied),
                sum(|s| s.bytes_sent + s.bytes_received),
                4 * k
            );
            let mut snapshots = Vec::new();
            for p in &net.peers {
                let room = p.room.id();
                snapshots.push(p.node.replica().try_call(move |r| r.snapshot(&room)).await?);
            }
            ensure!(snapshots.windows(2).all(|s| s[0] == s[1]), "replicas differ after the heal");

            // Each peer of one half lacked the other half's deliveries.
            let pa: Vec<Vec<u8>> = from_a.iter().map(Delivery::to_bytes).collect();
            let pb: Vec<Vec<u8>> = from_b.iter().map(Delivery::to_bytes).collect();
            let lacked = [&pb, &pb, &pa, &pa];
            let payload: usize = lacked.iter().flat_map(|set| set.iter().map(Vec::len)).sum();
            let raw = tcp_transfers(&lacked)?;
            Ok([heal, raw, bytes, payload as f64])
        })
    })?;
    rt.block_on(net.shutdown())?;
    let col = |i| column(&rows, i);
    Ok(Report {
        name: "partition",
        workload: format!(
            "four peers on 127.0.0.1, every pair connected, the mesh formed by warm-up; per \
             run the halves {{0, 1}} and {{2, 3}} are blocked from each other on both sides, \
             each writes {k} messages of 20–200 bytes of text by gossip within the half, then \
             the blocks are lifted and the first half dials the second; heal time from just \
             before the unblock to the last missing insert in the four timelines (checked \
             equal after), bytes sent by all peers until the catch-ups the new connections \
             started have all finished"
        ),
        baseline_name: "raw payload",
        baseline: "no natural raw baseline for healing: bytes are compared with the \
                   deliveries each peer lacked (summed over the four peers); time with moving \
                   exactly those over four plain loopback TCP connections at once, \
                   length-prefixed, the receivers applying nothing"
            .into(),
        metrics: vec![
            Metric::compared(
                format!("heal time, {k} + {k} messages"),
                Unit::Millis,
                &col(0),
                &col(1),
            ),
            Metric::compared(
                format!("bytes to heal, {k} + {k} messages"),
                Unit::Bytes,
                &col(2),
                &col(3),
            ),
        ],
        goals: Vec::new(),
    })
}

/// Like [`until_arrived`], for the peers `within` only.
async fn until_arrived_in(
    net: &ConcordNet,
    sent: &[(usize, MessageId)],
    within: &[usize],
    wait: Duration,
) -> bool {
    let start = Instant::now();
    loop {
        if sent.iter().all(|(from, id)| {
            within.iter().all(|&p| p == *from || net.peers[p].arrivals.at(id).is_some())
        }) {
            return true;
        }
        if start.elapsed() > wait {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ----- raw TCP ------------------------------------------------------------------

/// Where a raw TCP transfer's clock starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TcpClock {
    /// Before connecting: for a heal, which reconnects too.
    Connect,
    /// Once connected and the receiver is reading (after a one-byte
    /// exchange): for a catch-up over an established connection.
    Connected,
}

/// Sends `payloads` over a fresh loopback TCP connection, each prefixed by
/// its length (u32), to a thread that reads them all, applies nothing and
/// answers one byte; returns the seconds from `clock` to the answer.
fn tcp_transfer(payloads: &[Vec<u8>], clock: TcpClock) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let count = payloads.len();
    std::thread::scope(|s| {
        let receiver = s.spawn(move || -> Result<()> {
            let (stream, _) = listener.accept()?;
            let mut reader = BufReader::new(&stream);
            if clock == TcpClock::Connected {
                let mut hello = [0u8; 1];
                reader.read_exact(&mut hello)?;
                (&stream).write_all(&hello)?;
            }
            let mut buf = Vec::new();
            for _ in 0..count {
                let mut len = [0u8; 4];
                reader.read_exact(&mut len)?;
                buf.resize(u32::from_be_bytes(len) as usize, 0);
                reader.read_exact(&mut buf)?;
            }
            (&stream).write_all(&[1])?;
            Ok(())
        });
        let mut start = Instant::now();
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        if clock == TcpClock::Connected {
            let mut hello = [1u8; 1];
            (&stream).write_all(&hello)?;
            (&stream).read_exact(&mut hello)?;
            start = Instant::now();
        }
        let mut writer = BufWriter::new(&stream);
        for p in payloads {
            writer.write_all(&(p.len() as u32).to_be_bytes())?;
            writer.write_all(p)?;
        }
        writer.flush()?;
        drop(writer);
        let mut ack = [0u8; 1];
        (&stream).read_exact(&mut ack)?;
        let secs = start.elapsed().as_secs_f64();
        receiver.join().map_err(|_| anyhow!("TCP receiver panicked"))??;
        Ok(secs)
    })
}

/// [`tcp_transfer`] of each set at once, each on its own connection and
/// timed from before connecting; returns the seconds until the last
/// finished.
fn tcp_transfers(sets: &[&Vec<Vec<u8>>]) -> Result<f64> {
    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> =
            sets.iter().map(|set| s.spawn(|| tcp_transfer(set, TcpClock::Connect))).collect();
        for h in handles {
            h.join().map_err(|_| anyhow!("TCP sender panicked"))??;
        }
        anyhow::Ok(())
    })?;
    Ok(start.elapsed().as_secs_f64())
}

// ----- catch-up ------------------------------------------------------------------

/// Copies a directory tree (a store kept open and idle, so that the copy
/// is what sled would recover after a crash at that moment).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.metadata()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A prepared store: a replica with its device key that joined the room and
/// applied the first deliveries; kept open so that copies of it are
/// consistent.
struct Template {
    key: [u8; 32],
    dir: TempDir,
    _replica: Replica<SledStore>,
}

impl Template {
    fn build(
        key: [u8; 32],
        genesis: &[u8],
        governance: &[GovChange],
        deliveries: &[Delivery],
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut replica = Replica::open_with_seed(open_store(dir.path())?, clock, key)?;
        let room = replica.join_room(genesis)?;
        replica.apply_governance(&room, governance.to_vec())?;
        apply_all(&mut replica, &room, deliveries)?;
        Ok(Self { key, dir, _replica: replica })
    }

    /// A node on a fresh copy of this store, with `extra` applied first.
    fn start(
        &self,
        room: RoomId,
        extra: &[Delivery],
        clock: Arc<dyn Clock>,
    ) -> Result<(Node, TempDir)> {
        let dir = tempfile::tempdir()?;
        copy_dir(self.dir.path(), dir.path())?;
        let mut replica =
            Replica::open_with_seed(open_store(dir.path())?, clock.clone(), self.key)?;
        apply_all(&mut replica, &room, extra)?;
        let config = node_config().confirm_delay(QUIET);
        Ok((Node::start(replica, clock, config)?, dir))
    }
}

/// Applies `deliveries` 1,000 per call, checking each was accepted.
fn apply_all(
    replica: &mut Replica<SledStore>,
    room: &RoomId,
    deliveries: &[Delivery],
) -> Result<()> {
    for chunk in deliveries.chunks(1_000) {
        for applied in replica.apply(room, chunk.to_vec())? {
            applied?;
        }
    }
    Ok(())
}

/// Waits for the catch-ups a node runs with `peers` when they connect (an
/// end either way: synced or failed); returns what the synced ones moved.
async fn until_synced(
    events: &mut broadcast::Receiver<NodeEvent>,
    peers: &[PeerId],
) -> Result<Vec<SyncStats>> {
    let mut waiting: HashSet<PeerId> = peers.iter().copied().collect();
    let mut out = Vec::new();
    tokio::time::timeout(SETUP_WAIT, async {
        loop {
            let ended = match events.recv().await {
                Ok(NodeEvent::Synced { peer, stats, .. }) => {
                    out.push(stats);
                    peer
                }
                Ok(NodeEvent::SyncFailed { peer, .. }) => peer,
                Err(broadcast::error::RecvError::Closed) => bail!("node closed"),
                _ => continue,
            };
            waiting.remove(&ended);
            if waiting.is_empty() {
                return Ok(out);
            }
        }
    })
    .await?
}

/// Workload: a room of `catchup_room` messages of 20–200 bytes (4,000 per
/// day of clock time, one author, posted 100 per commit). Per run and K:
/// nodes A and B start from copies of prepared stores, both holding all but
/// the newest K; they connect and run their on-connect catch-ups (nothing
/// to move); A then applies the newest K directly (no gossip), and B runs
/// one `Node::sync` with A, timed from the call to its answer. Bytes are
/// both nodes' bytes sent during it.
/// Baseline: the K missing deliveries' bytes (`Delivery::to_bytes`); time
/// to send them over a plain loopback TCP connection, length-prefixed, timed
/// once connected (as the nodes are), the receiver applying nothing.
pub fn run_catchup(ctx: &Ctx) -> Result<Report> {
    let n = ctx.sizes.catchup_room;
    let max_k = CATCHUP_MISSING.iter().copied().max().unwrap_or(0);
    ensure!(max_k < n, "catchup-net needs more than {max_k} messages");
    let w = Workload::generate(ctx.seed, n, busy_span(n));
    eprintln!("catchup-net: building the room of {} messages", thousands(n as f64));
    let mut origin = ConcordRoom::create(&w)?;
    origin.post(&w.messages, GROUP)?;
    let room = origin.room;
    let genesis = origin.replica.genesis(&room)?.as_bytes().to_vec();
    let governance = origin.replica.governance_since(&room, &[])?;
    let mut deliveries = origin.replica.deliveries(&room)?;
    ensure!(deliveries.len() == n, "{} envelopes for {n} messages", deliveries.len());
    deliveries.sort_by_key(|d| (d.envelope.bucket(), d.envelope.clock_range().0));
    drop(origin);
    // The nodes' clock stands just after the last message.
    let end = w.messages.last().map_or(0, |m| m.at) + 1_000;
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(end));
    let keys = seeds(&mut net_rng(ctx.seed, NetStream::Keys), 2);
    let base = n - max_k;
    let templates = [
        Template::build(keys[0], &genesis, &governance, &deliveries[..base], clock.clone())?,
        Template::build(keys[1], &genesis, &governance, &deliveries[..base], clock.clone())?,
    ];
    let rt = runtime()?;
    let mut metrics = Vec::new();
    let mut applying = Vec::new();
    for k in CATCHUP_MISSING {
        let held = &deliveries[base..n - k];
        let missing = &deliveries[n - k..];
        let payloads: Vec<Vec<u8>> = missing.iter().map(Delivery::to_bytes).collect();
        let payload: usize = payloads.iter().map(Vec::len).sum();
        let mut first = true;
        let rows = runs(&format!("catchup-net, K = {k}"), ctx.runs, || {
            let (a, _dir_a) =
                rt.block_on(async { templates[0].start(room, held, clock.clone()) })?;
            let (b, _dir_b) =
                rt.block_on(async { templates[1].start(room, held, clock.clone()) })?;
            let (secs, bytes, applied) = rt.block_on(async {
                let addr = a.listen(loopback()).await?;
                let (mut ea, mut eb) = (a.events(), b.events());
                b.dial(addr).await?;
                until_synced(&mut ea, &[b.peer_id()]).await?;
                until_synced(&mut eb, &[a.peer_id()]).await?;
                let lacking = missing.to_vec();
                let apply_start = Instant::now();
                a.replica()
                    .try_call(move |r| {
                        for applied in r.apply(&room, lacking)? {
                            applied?;
                        }
                        Ok(())
                    })
                    .await?;
                let applied = apply_start.elapsed().as_secs_f64();
                let before = a.stats().await?.bytes_sent + b.stats().await?.bytes_sent;
                let start = Instant::now();
                let stats = b.sync(a.peer_id(), room).await?;
                let secs = start.elapsed().as_secs_f64();
                let after = a.stats().await?.bytes_sent + b.stats().await?.bytes_sent;
                ensure!(stats.envelopes_applied == k as u64, "catch-up applied {stats:?}");
                if first {
                    eprintln!("catchup-net, K = {k}: {stats:?}");
                    first = false;
                }
                a.shutdown().await?;
                b.shutdown().await?;
                anyhow::Ok((secs, after.saturating_sub(before) as f64, applied))
            })?;
            let raw = tcp_transfer(&payloads, TcpClock::Connected)?;
            Ok([secs, raw, bytes, payload as f64, applied])
        })?;
        let col = |i| column(&rows, i);
        applying.push(format!("{:.2} ms", quantile(&col(4), 0.5) * 1e3));
        let of = format!("{} of {}", thousands(k as f64), thousands(n as f64));
        metrics.push(Metric::compared(
            format!("catch-up time, {of}"),
            Unit::Millis,
            &col(0),
            &col(1),
        ));
        metrics.push(Metric::compared(format!("bytes sent, {of}"), Unit::Bytes, &col(2), &col(3)));
    }
    Ok(Report {
        name: "catchup-net",
        workload: format!(
            "a room of {} messages of 20–200 bytes (4,000 per day of clock time, one author, \
             posted {GROUP} per commit); per run and K, nodes A and B start on copies of \
             stores holding all but the newest K, connect and finish their on-connect \
             catch-ups; A then applies the newest K (no gossip) and B runs one catch-up \
             with A (`Node::sync`), timed from the call to its answer; bytes sent by both \
             nodes during it. For reference, A's own apply of the same K envelopes (on its \
             replica thread, no network) took a median of {} for K = {}",
            thousands(n as f64),
            applying.join(", "),
            CATCHUP_MISSING.map(|k| thousands(k as f64)).join(", ")
        ),
        baseline_name: "raw payload",
        baseline: "the K missing deliveries (Delivery::to_bytes); time to send them over a \
                   loopback TCP connection (std::net, u32 length prefix), timed once connected \
                   and the receiver reading, which applies nothing"
            .into(),
        metrics,
        goals: Vec::new(),
    })
}
