//! # concord-node
//!
//! The networked side of Concord, and the one crate a desktop app depends
//! on: a [`Node`] opens a data directory, runs the replica on its own thread
//! and one actor owning the libp2p swarm (gossip per room, catch-up sync over
//! request-response, mDNS, relay client and DCUtR), and hands out [`Room`]
//! handles to send, edit, delete, react, page and watch a room. Room tickets
//! carry a room, the addresses to reach it and perhaps an invite in one
//! string. The core is
//! re-exported as [`core`]. See `docs/architecture.md`.
//!
//! # Features
//!
//! - `relay`: the `relay` module, an always-on peer that stores rooms
//!   for offline devices, with its embedded sled store, TOML config and
//!   HTTP endpoint.
//! - `cli` (default): the `concord` binary; implies `relay`.
//! - `dynamodb`, `cql`: the relay store on the DynamoDB API or on CQL;
//!   each implies `relay`.
//!
//! An app that links the node as a library (the mobile library in `ffi/`)
//! turns the default off and gets none of the relay's dependencies.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod actor;
mod behaviour;
mod config;
mod error;
mod events;
mod node;
mod redeem;
#[cfg(feature = "relay")]
pub mod relay;
mod replica_actor;
mod room;
mod sync_codec;
mod ticket;

pub use actor::{NetStats, Presence};
pub use concord_core as core;
pub use concord_core::{
    Action, Anchor, AuditEntry, AuthorId, Cursor, DeliveryState, DeviceKeys, Draft, GovState,
    Invite, Message, MessageId, Role, RoomId, RoomInfo, RoomOptions, SignalKind, Subscription,
    TimelineDiff, TimelineListener,
};
pub use concord_core::{TimelineItem, TimelinePage};
pub use config::{
    NodeConfig, DEFAULT_GOSSIP_SEEN_TTL, DEFAULT_INVITE_WAIT, DEFAULT_STORE_CACHE_BYTES,
    DEFAULT_SYNC_INTERVAL, MIN_GOSSIP_SEEN_TTL,
};
pub use error::{NodeError, Result};
pub use events::{NodeEvent, EVENT_QUEUE};
pub use libp2p::PeerId;
pub use multiaddr::{Multiaddr, Protocol};
pub use node::{Node, COMMAND_QUEUE};
pub use redeem::INVITE_POLL;
pub use replica_actor::{
    Announcements, ReplicaHandle, ReplicaThread, ANNOUNCE_QUEUE, REPLICA_QUEUE,
};
pub use room::Room;
pub use sync_codec::{SyncCodec, SyncRequest, SyncResponse, SYNC_PROTOCOL};
pub use ticket::{
    RoomTicket, TicketError, MAX_ADDRESS_BYTES, MAX_TICKET_ADDRESSES, MAX_TICKET_CHARS,
    TICKET_PREFIX,
};
