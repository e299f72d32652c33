//! # concord-node
//!
//! The networked side of Concord. Today it re-exports the core so a desktop
//! app can depend on this one crate; the libp2p actor, gossip, catch-up sync
//! and the relay arrive here next (see `docs/architecture.md`).
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub use concord_core as core;
