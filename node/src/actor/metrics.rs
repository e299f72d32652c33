//! The node's counters and traffic statistics: Concord's own counters in
//! the metrics registry beside libp2p's, and [`NetStats`] read from them.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::State;
use concord_core::Store;

/// Counters of a node's network traffic since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetStats {
    /// Bytes written to every connection (after encryption and muxing).
    pub bytes_sent: u64,
    /// Bytes read from every connection.
    pub bytes_received: u64,
    /// Gossip messages received, duplicates included.
    pub gossip_received: u64,
    /// Gossip messages received that were already seen.
    pub gossip_duplicates: u64,
    /// Peers connected now.
    pub peers: u64,
}

/// Counters every node keeps, in its metrics registry.
#[derive(Clone, Default)]
pub(super) struct Counters {
    pub(super) envelopes_rejected: Counter,
    pub(super) sync_sessions: Counter,
    pub(super) rooms_taken_up: Counter,
}

impl Counters {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "concord_envelopes_rejected",
            "Envelopes from peers that failed validation (gossip and sync)",
            self.envelopes_rejected.clone(),
        );
        registry.register(
            "concord_sync_sessions",
            "Catch-up sessions peers started with this node",
            self.sync_sessions.clone(),
        );
        registry.register(
            "concord_rooms_taken_up",
            "Rooms this node took up on a peer's request",
            self.rooms_taken_up.clone(),
        );
    }
}

impl<S: Store + 'static> State<S> {
    pub(super) fn stats(&self) -> NetStats {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.metrics).is_err() {
            return NetStats::default();
        }
        let mut stats =
            NetStats { peers: self.swarm.connected_peers().count() as u64, ..NetStats::default() };
        let mut unique = 0u64;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let value = value as u64;
            if name.starts_with("libp2p_bandwidth_bytes_total") {
                if name.contains("direction=\"Outbound\"") {
                    stats.bytes_sent += value;
                } else if name.contains("direction=\"Inbound\"") {
                    stats.bytes_received += value;
                }
            } else if name.starts_with("concord_gossip_topic_msg_recv_counts_unfiltered_total") {
                stats.gossip_received += value;
            } else if name.starts_with("concord_gossip_topic_msg_recv_counts_total") {
                unique += value;
            }
        }
        stats.gossip_duplicates = stats.gossip_received.saturating_sub(unique);
        stats
    }
}
