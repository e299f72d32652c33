//! # concord-node
//!
//! The networked side of Concord: the replica actor (the replica on its own
//! thread, behind a cloneable async handle), room tickets (a room's genesis
//! and peer addresses in one string), and the node (one actor owning the
//! libp2p swarm: gossip per room, catch-up sync over request-response). It
//! re-exports the core, so a desktop app can depend on this one crate. See
//! `docs/architecture.md` for what is built and what comes next.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod node;
mod replica_actor;
mod sync_codec;
mod ticket;

pub use concord_core as core;
pub use error::{NodeError, Result};
pub use libp2p::PeerId;
pub use multiaddr::Multiaddr;
pub use node::{Node, NodeConfig, COMMAND_QUEUE, DEFAULT_SYNC_INTERVAL};
pub use replica_actor::{ReplicaHandle, ReplicaThread, REPLICA_QUEUE};
pub use ticket::{
    RoomTicket, TicketError, MAX_ADDRESS_BYTES, MAX_TICKET_ADDRESSES, MAX_TICKET_CHARS,
    TICKET_PREFIX,
};
