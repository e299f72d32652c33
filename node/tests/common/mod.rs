//! Shared helpers of the node tests: peers on real sled stores in
//! temporary directories, on a shared manual clock, with mDNS off so that
//! tests running side by side on one machine do not find each other.
#![allow(dead_code)]

// `concord chat` processes: the binary is built with the `cli` feature.
#[cfg(feature = "cli")]
pub mod chat;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
#[cfg(feature = "relay")]
pub mod relay_conformance;

use std::sync::Arc;
use std::time::Duration;

use concord_core::{ManualClock, Replica, RoomId, RoomSnapshot, SledStore};
use concord_node::{Node, NodeConfig, NodeEvent};
use tokio::sync::broadcast;

pub const EPOCH_MILLIS: u64 = 1_750_000_000_000;

pub struct Peer {
    pub node: Node,
    pub dir: tempfile::TempDir,
}

/// Settings for tests: no mDNS, quick catch-up and confirmation.
pub fn config() -> NodeConfig {
    NodeConfig::default()
        .mdns(false)
        .sync_interval(Duration::from_millis(300))
        .confirm_delay(Duration::from_millis(100))
}

pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(EPOCH_MILLIS))
}

pub fn open(dir: &std::path::Path, seed: u8, clock: &Arc<ManualClock>) -> Replica<SledStore> {
    Replica::open_with_seed(SledStore::open(dir).unwrap(), clock.clone(), [seed; 32]).unwrap()
}

pub fn peer(seed: u8, clock: &Arc<ManualClock>, config: NodeConfig) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(open(dir.path(), seed, clock), clock.clone(), config).unwrap();
    Peer { node, dir }
}

pub async fn snapshot(node: &Node, room: RoomId) -> RoomSnapshot {
    node.replica().try_call(move |r| r.snapshot(&room)).await.unwrap()
}

/// Polls until every node shows the same room with `want` messages, or
/// fails after 30 s.
pub async fn until_converged(nodes: &[&Node], room: RoomId, want: usize) -> RoomSnapshot {
    let mut last = Vec::new();
    for _ in 0..300 {
        last.clear();
        for n in nodes {
            last.push(snapshot(n, room).await);
        }
        if last[0].messages.len() == want && last.windows(2).all(|w| w[0] == w[1]) {
            return last.swap_remove(0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts: Vec<usize> = last.iter().map(|s| s.messages.len()).collect();
    let views: Vec<String> = last
        .iter()
        .map(|s| {
            let each: Vec<String> = s
                .messages
                .iter()
                .map(|m| match (&m.body, m.waiting_for_key) {
                    (_, true) => format!("{} waiting for key", m.id),
                    (Some(body), false) => format!("{} {body:?}", m.id),
                    (None, false) => format!("{} no body", m.id),
                })
                .collect();
            each.join(", ")
        })
        .collect();
    panic!("nodes did not converge to {want} messages: {counts:?}\n{}", views.join("\n"));
}

/// Polls `check` every 50 ms until it holds, or fails after 30 s.
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The first event on `events` that `pick` takes something from, or a
/// panic after 30 s.
pub async fn until_event<T>(
    what: &str,
    events: &mut broadcast::Receiver<NodeEvent>,
    mut pick: impl FnMut(NodeEvent) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(found) = pick(event) {
                        return found;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events closed before {what}"),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(found) => found,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// An attacker's swarm: plain TCP + Noise + Yamux under a fresh identity,
/// with the behaviour `build` makes from its key.
pub fn attacker_swarm<B: libp2p::swarm::NetworkBehaviour>(
    build: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| build(key))
        .unwrap()
        .build()
}

/// Request-response speaking Concord's sync protocol.
pub fn attacker_sync() -> libp2p::request_response::Behaviour<concord_node::SyncCodec> {
    use libp2p::request_response::{self, ProtocolSupport};
    request_response::Behaviour::new(
        [(concord_node::SYNC_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    )
}

/// A gossipsub that validates nothing and sends up to 128 KiB.
pub fn attacker_gossip(key: &libp2p::identity::Keypair) -> libp2p::gossipsub::Behaviour {
    use libp2p::gossipsub::{self, MessageAuthenticity, ValidationMode};
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Strict)
        .max_transmit_size(128 * 1024)
        .heartbeat_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config).unwrap()
}

/// An attacker's swarm speaking Concord's sync protocol, nothing else.
pub fn sync_attacker() -> libp2p::Swarm<libp2p::request_response::Behaviour<concord_node::SyncCodec>>
{
    attacker_swarm(|_| attacker_sync())
}

/// An attacker's swarm with [`attacker_gossip`] subscribed to `topic`.
pub fn gossip_attacker(
    topic: &libp2p::gossipsub::IdentTopic,
) -> libp2p::Swarm<libp2p::gossipsub::Behaviour> {
    let mut swarm = attacker_swarm(attacker_gossip);
    swarm.behaviour_mut().subscribe(topic).unwrap();
    swarm
}

/// Drives `swarm` and publishes `payloads` on `topic`, one every `every`
/// (retrying until the mesh takes them), for at most `within`, then a
/// second more so they flush. Returns how many were published.
pub fn gossip_attack(
    mut swarm: libp2p::Swarm<libp2p::gossipsub::Behaviour>,
    topic: libp2p::gossipsub::IdentTopic,
    payloads: Vec<Vec<u8>>,
    every: Duration,
    within: Duration,
) -> tokio::task::JoinHandle<usize> {
    use futures::StreamExt;
    tokio::spawn(async move {
        let mut sent = 0;
        let mut deadline = tokio::time::Instant::now() + within;
        let mut tick = tokio::time::interval(every);
        while tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = swarm.select_next_some() => {}
                _ = tick.tick() => {
                    if sent < payloads.len()
                        && swarm.behaviour_mut().publish(topic.clone(), payloads[sent].clone()).is_ok()
                    {
                        sent += 1;
                        if sent == payloads.len() {
                            deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                        }
                    }
                }
            }
        }
        sent
    })
}
