//! # concord-node
//!
//! The networked side of Concord. Today it holds the replica actor (the
//! replica on its own thread, behind a cloneable async handle) and room
//! tickets (a room's genesis and peer addresses in one string), and re-exports
//! the core, so a desktop app can depend on this one crate; the libp2p actor,
//! gossip, the network side of catch-up sync and the relay arrive here next
//! (see `docs/architecture.md`).
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod replica_actor;
mod ticket;

pub use concord_core as core;
pub use error::{NodeError, Result};
pub use multiaddr::Multiaddr;
pub use replica_actor::{ReplicaHandle, ReplicaThread, REPLICA_QUEUE};
pub use ticket::{
    RoomTicket, TicketError, MAX_ADDRESS_BYTES, MAX_TICKET_ADDRESSES, MAX_TICKET_CHARS,
    TICKET_PREFIX,
};
