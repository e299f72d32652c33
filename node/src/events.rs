//! What a node tells its app: peers, sync progress, delivery, presence, and
//! how redeeming a ticket's invite ended.

use concord_core::{AuthorId, Hlc, RoomId, SignalKind, SyncStats};
use libp2p::PeerId;

/// Events a node broadcasts. Receivers that fall more than
/// [`EVENT_QUEUE`] events behind miss the oldest ones (and are told how
/// many), so a slow app never holds the node back.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A connection to a new peer was established.
    PeerConnected(PeerId),
    /// The last connection to a peer closed.
    PeerLost(PeerId),
    /// mDNS found a peer on the local network (the node dials it).
    Discovered(PeerId),
    /// A catch-up with a peer about a room finished.
    Synced {
        /// The peer.
        peer: PeerId,
        /// The room.
        room: RoomId,
        /// What the session moved.
        stats: SyncStats,
    },
    /// A catch-up failed (the peer went away, timed out, or misbehaved).
    SyncFailed {
        /// The peer.
        peer: PeerId,
        /// The room.
        room: RoomId,
        /// Why.
        error: String,
    },
    /// Own messages of a room stamped at or before `upto` reached another
    /// device: their delivery state moved from saved to reached.
    Delivered {
        /// The room.
        room: RoomId,
        /// The new watermark.
        upto: Hlc,
    },
    /// Another member typed, stopped, came online or went offline.
    Signal {
        /// The room.
        room: RoomId,
        /// Who.
        author: AuthorId,
        /// What.
        kind: SignalKind,
    },
    /// A peer was banned for misbehaving over sync.
    Banned(PeerId),
    /// This node took up a room a peer asked about (nodes that serve rooms
    /// on request: relays).
    RoomTakenUp {
        /// The room.
        room: RoomId,
        /// The peer that presented it.
        peer: PeerId,
    },
    /// This device is a member of a room it joined with a ticket carrying
    /// an invite: its Join was accepted, or it was a listed member already
    /// (joining with the ticket again).
    InviteRedeemed {
        /// The room.
        room: RoomId,
    },
    /// The invite of a ticket this device joined a room with did not make
    /// it a member: refused (used, revoked, expired, for another key) or
    /// the room's governance did not bring it within
    /// [`crate::NodeConfig::invite_wait`]. The device holds the room still,
    /// and may post only if the room is open.
    InviteFailed {
        /// The room.
        room: RoomId,
        /// Why.
        error: String,
    },
}

/// Events buffered per receiver.
pub const EVENT_QUEUE: usize = 1024;
