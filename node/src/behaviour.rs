//! The libp2p behaviour of a node and the swarm that runs it: TCP with Noise
//! and Yamux, QUIC, and the circuit relay v2 client as transports (with byte
//! counters); gossipsub, sync request-response, identify, ping, mDNS, DCUtR,
//! an optional relay server, connection limits and a block list.

use std::time::Duration;

use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::gossipsub::{self, MessageAuthenticity, ValidationMode};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, dcutr, identify, identity, mdns, noise, ping, relay, tcp, yamux, Swarm,
};
use prometheus_client::registry::Registry;

use crate::config::NodeConfig;
use crate::error::{NodeError, Result};
use crate::sync_codec::{SyncCodec, SYNC_PROTOCOL};

/// Largest gossip message: gossipsub's 64 KiB, which every envelope fits.
pub(crate) const MAX_GOSSIP_BYTES: usize = 64 * 1024;

/// gossipsub's heartbeat: mesh upkeep, and gossip (IHAVE) of the message
/// ids of the last three heartbeats to peers outside the mesh, so 1.5 s
/// after a node got a message. [`crate::config::MIN_GOSSIP_SEEN_TTL`]
/// follows from it. Each heartbeat also drops from the message cache what
/// arrived five heartbeats ago: the cache holds 2.5 s of messages.
const GOSSIP_HEARTBEAT: Duration = Duration::from_millis(500);

/// Delay of the first heartbeat after the swarm starts, beyond one period.
/// gossipsub's default, 5 s, leaves the message cache unshifted for 5.5 s
/// after start, so it holds every message of those seconds until the first
/// heartbeats drop them 2.5 s later (several MiB per node at 1,000 messages
/// per second), and leaves peers met in those seconds out of the mesh.
/// go-libp2p's 100 ms is enough.
const GOSSIP_FIRST_HEARTBEAT: Duration = Duration::from_millis(100);

/// Protocol name announced by identify.
const IDENTIFY_PROTOCOL: &str = "/concord/1";

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) sync: request_response::Behaviour<SyncCodec>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) relay_client: relay::client::Behaviour,
    pub(crate) dcutr: dcutr::Behaviour,
    pub(crate) relay_server: Toggle<relay::Behaviour>,
}

/// Scoring of a room topic: invalid envelopes cost a peer dearly; the
/// delivery-rate penalties stay off, since a quiet room is not a fault; and
/// nothing scores positive (time in the mesh, first deliveries), so that the
/// application score that keeps a non-member from a room's gossip
/// (`NON_READER_SCORE` in the actor) lands it in a known band whatever its
/// history: below the publish threshold, above the graylist threshold.
pub(crate) fn topic_score() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.9,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        ..gossipsub::TopicScoreParams::default()
    }
}

/// Builds the swarm with the network identity made from `secret`. Byte and
/// gossip counters are registered in `metrics`.
pub(crate) fn build_swarm(
    secret: [u8; 32],
    config: &NodeConfig,
    metrics: &mut Registry,
) -> Result<Swarm<Behaviour>> {
    let net = |e: &dyn std::fmt::Display| NodeError::Network(e.to_string());
    let mut secret = secret;
    let keypair = identity::Keypair::ed25519_from_bytes(&mut secret).map_err(|e| net(&e))?;
    let limits = ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(config.max_pending_connections))
        .with_max_pending_outgoing(Some(config.max_pending_connections));
    let (mdns_on, relay_on) = (config.mdns, config.relay_server);
    let seen_ttl = config.gossip_seen_ttl;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .map_err(|e| net(&e))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| net(&e))?
        .with_bandwidth_metrics(metrics)
        .with_behaviour(|key, relay_client| {
            let peer = key.public().to_peer_id();
            let gossip = gossipsub::ConfigBuilder::default()
                .validation_mode(ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(MAX_GOSSIP_BYTES)
                .heartbeat_interval(GOSSIP_HEARTBEAT)
                .heartbeat_initial_delay(GOSSIP_FIRST_HEARTBEAT)
                // gossipsub keeps the id of every message it saw for this
                // long (60 s by default), and its peer score keeps a
                // delivery record of each for 120 s (not configurable):
                // both grow with the message rate until they expire.
                .duplicate_cache_time(seen_ttl)
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
                })
                .build()
                .map_err(|e| e.to_string())?;
            let mut gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip)?
                    .with_metrics(
                        metrics.sub_registry_with_prefix("concord_gossip"),
                        gossipsub::MetricsConfig::default(),
                    );
            // Peer scoring, so that peers sending envelopes the replica
            // rejects lose standing and, past the thresholds, are ignored.
            gossipsub.with_peer_score(
                gossipsub::PeerScoreParams::default(),
                gossipsub::PeerScoreThresholds::default(),
            )?;
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?)
            } else {
                None
            };
            let relay_server =
                relay_on.then(|| relay::Behaviour::new(peer, relay::Config::default()));
            Ok(Behaviour {
                blocked: allow_block_list::Behaviour::default(),
                limits: connection_limits::Behaviour::new(limits),
                gossipsub,
                sync: request_response::Behaviour::new(
                    [(SYNC_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(60)),
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_PROTOCOL.into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                mdns: mdns.into(),
                relay_client,
                dcutr: dcutr::Behaviour::new(peer),
                relay_server: relay_server.into(),
            })
        })
        .map_err(|e| net(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}
