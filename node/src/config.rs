//! Settings of a node.

use std::time::Duration;

use crate::error::NodeError;

/// How often a node runs catch-up with every connected peer, by default.
/// Catch-up also runs on every new connection; the period heals what gossip
/// dropped while connected.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(30);

/// Settings of a node. `NodeConfig::default()` is what an app on a phone or
/// a desktop wants; tests turn mDNS off so that unrelated nodes on one
/// machine do not find each other.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Period of catch-up with every connected peer, per joined room.
    pub sync_interval: Duration,
    /// Find peers on the local network by mDNS and connect to them.
    pub mdns: bool,
    /// Established connections in all, beyond which new ones are refused.
    pub max_connections: u32,
    /// Established connections to one peer.
    pub max_connections_per_peer: u32,
    /// Connections being set up (in and out), beyond which new ones are
    /// refused.
    pub max_pending_connections: u32,
    /// Serve as a circuit relay (v2) for peers behind NAT. Off on devices;
    /// the relay node turns it on.
    pub relay_server: bool,
    /// After a message goes out by gossip, wait this long and confirm it by
    /// catch-up with one peer, which is what moves it to "reached".
    pub confirm_delay: Duration,
    /// Period of the "online" presence signal in each joined room.
    pub presence_interval: Duration,
    /// Malformed or failing sync requests a peer may send before it is
    /// disconnected and banned for [`NodeConfig::ban_time`].
    pub max_sync_strikes: u32,
    /// How long a peer that misbehaved over sync stays banned.
    pub ban_time: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            sync_interval: DEFAULT_SYNC_INTERVAL,
            mdns: true,
            max_connections: 256,
            max_connections_per_peer: 4,
            max_pending_connections: 64,
            relay_server: false,
            confirm_delay: Duration::from_millis(300),
            presence_interval: Duration::from_secs(15),
            max_sync_strikes: 3,
            ban_time: Duration::from_secs(600),
        }
    }
}

impl NodeConfig {
    /// Checks every setting is in range.
    pub fn validate(&self) -> Result<(), NodeError> {
        let bad = |what: &str| Err(NodeError::InvalidConfig(what.to_owned()));
        if self.sync_interval.is_zero() {
            return bad("sync_interval must be above zero");
        }
        if self.presence_interval.is_zero() {
            return bad("presence_interval must be above zero");
        }
        if self.max_connections == 0 || self.max_connections_per_peer == 0 {
            return bad("connection limits must be above zero");
        }
        if self.max_pending_connections == 0 {
            return bad("max_pending_connections must be above zero");
        }
        if self.max_sync_strikes == 0 {
            return bad("max_sync_strikes must be above zero");
        }
        Ok(())
    }

    /// Sets the catch-up period.
    pub fn sync_interval(mut self, every: Duration) -> Self {
        self.sync_interval = every;
        self
    }

    /// Turns mDNS discovery on or off.
    pub fn mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// Sets the connection limits (total and per peer).
    pub fn connection_limits(mut self, total: u32, per_peer: u32) -> Self {
        self.max_connections = total;
        self.max_connections_per_peer = per_peer;
        self
    }

    /// Turns serving as a circuit relay on or off.
    pub fn relay_server(mut self, on: bool) -> Self {
        self.relay_server = on;
        self
    }

    /// Sets the delay before a gossiped message is confirmed by catch-up.
    pub fn confirm_delay(mut self, delay: Duration) -> Self {
        self.confirm_delay = delay;
        self
    }

    /// Sets the presence period.
    pub fn presence_interval(mut self, every: Duration) -> Self {
        self.presence_interval = every;
        self
    }

    /// Sets how many bad sync requests earn a ban, and for how long.
    pub fn sync_strikes(mut self, strikes: u32, ban: Duration) -> Self {
        self.max_sync_strikes = strikes;
        self.ban_time = ban;
        self
    }
}
