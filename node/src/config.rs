//! Settings of a node.

use std::time::Duration;

use concord_core::DEFAULT_DOC_CACHE_ITEMS;

use crate::error::NodeError;

/// How often a node runs catch-up with every connected peer, by default.
/// Catch-up also runs on every new connection; the period heals what gossip
/// dropped while connected.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(30);

/// sled's page cache of the store [`crate::Node::open`] opens, by default.
/// sled keeps the pages it writes and reads in this cache up to the cap, so
/// the cap is what bounds the store's memory: with 4 MiB, sled holds about
/// 7 MiB once the cache is full (the pages take more in memory than the cap
/// counts, and it has its log buffers). A replica writes at the end of each
/// tree (the newest bucket), so few pages are hot; a page beyond the cache
/// is read back from the file (usually the OS's cache) and decoded. The
/// core's default (`concord_core::DEFAULT_SLED_CACHE_BYTES`, 64 MiB, which
/// grows by about 1.6 KiB per message for some 40,000 messages) suits a
/// desktop with big rooms; a phone pays for every MiB it keeps resident
/// (SQLite's default page cache is 2 MiB).
pub const DEFAULT_STORE_CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// How long gossip remembers the id of a message it has seen (gossipsub's
/// duplicate cache), by default. A copy that arrives later is taken as new:
/// the replica finds it a duplicate and it is forwarded once more, which
/// costs bytes, not correctness. Copies come by the mesh within a network
/// round trip and by gossip (IHAVE) only while a peer still advertises the
/// message, 1.5 s after it got it, plus the 3 s a requested copy may take;
/// 10 s covers both with room for a slow link. gossipsub's own default,
/// 60 s, keeps 60 s of ids at any rate (about 170 B each): at 1,000 messages
/// per second, 10 MiB per node.
pub const DEFAULT_GOSSIP_SEEN_TTL: Duration = Duration::from_secs(10);

/// How long a node waits, by default, for a room's governance to bring the
/// invite of a ticket it joined with (see [`NodeConfig::invite_wait`]).
/// Catch-up brings it within a round trip of reaching any peer that holds
/// the room; ten minutes covers an issuer or relay that comes online a
/// little later. Past it the app calls `join_ticket` again to resume.
pub const DEFAULT_INVITE_WAIT: Duration = Duration::from_secs(600);

/// The shortest [`NodeConfig::gossip_seen_ttl`]: the window in which gossip
/// may still offer a message (1.5 s) and a requested copy may arrive (3 s).
/// Shorter, and a node would ask again for messages it just had.
pub const MIN_GOSSIP_SEEN_TTL: Duration = Duration::from_secs(5);

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
    /// sled's page cache of the store [`crate::Node::open`] opens, in
    /// bytes (see [`DEFAULT_STORE_CACHE_BYTES`]). A node started on a
    /// store opened elsewhere ([`crate::Node::start`]) ignores it.
    pub store_cache_bytes: u64,
    /// Items the replica's cached author documents may hold in all (see
    /// `concord_core::DEFAULT_DOC_CACHE_ITEMS`), for the replica
    /// [`crate::Node::open`] opens; like `store_cache_bytes`, a node started
    /// on a replica opened elsewhere ignores it.
    pub doc_cache_items: u64,
    /// How long gossip remembers a message id to drop copies of it (see
    /// [`DEFAULT_GOSSIP_SEEN_TTL`]); at least [`MIN_GOSSIP_SEEN_TTL`].
    pub gossip_seen_ttl: Duration,
    /// Take up a room this node does not hold when a peer starts a
    /// catch-up about it and presents its signed genesis. Off on devices;
    /// the relay turns it on.
    pub serve_rooms_on_request: bool,
    /// How long joining with a ticket that carries an invite waits for the
    /// room's governance to bring the invite's registration before it gives
    /// up ([`crate::NodeEvent::InviteFailed`]); see [`DEFAULT_INVITE_WAIT`].
    pub invite_wait: Duration,
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
            store_cache_bytes: DEFAULT_STORE_CACHE_BYTES,
            doc_cache_items: DEFAULT_DOC_CACHE_ITEMS,
            gossip_seen_ttl: DEFAULT_GOSSIP_SEEN_TTL,
            serve_rooms_on_request: false,
            invite_wait: DEFAULT_INVITE_WAIT,
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
        if self.store_cache_bytes == 0 {
            return bad("store_cache_bytes must be above zero");
        }
        if self.gossip_seen_ttl < MIN_GOSSIP_SEEN_TTL {
            return bad("gossip_seen_ttl must be at least 5 s");
        }
        if self.invite_wait.is_zero() {
            return bad("invite_wait must be above zero");
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

    /// Turns taking up rooms on a peer's request on or off.
    pub fn serve_rooms_on_request(mut self, on: bool) -> Self {
        self.serve_rooms_on_request = on;
        self
    }

    /// Sets sled's page cache of the store [`crate::Node::open`] opens.
    pub fn store_cache_bytes(mut self, bytes: u64) -> Self {
        self.store_cache_bytes = bytes;
        self
    }

    /// Sets how many items the cached author documents may hold in all.
    pub fn doc_cache_items(mut self, items: u64) -> Self {
        self.doc_cache_items = items;
        self
    }

    /// Sets how long gossip remembers the ids of messages it has seen.
    pub fn gossip_seen_ttl(mut self, ttl: Duration) -> Self {
        self.gossip_seen_ttl = ttl;
        self
    }

    /// Sets how long joining with an invite ticket waits for the invite.
    pub fn invite_wait(mut self, wait: Duration) -> Self {
        self.invite_wait = wait;
        self
    }

    /// Sets how many bad sync requests earn a ban, and for how long.
    pub fn sync_strikes(mut self, strikes: u32, ban: Duration) -> Self {
        self.max_sync_strikes = strikes;
        self.ban_time = ban;
        self
    }
}
