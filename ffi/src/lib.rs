//! # concord-ffi
//!
//! UniFFI bindings of Concord for Kotlin, Swift and Python. Everything here
//! is a thin wrapper over the node API (`concord-node`): a [`Client`] wraps
//! a [`concord_node::Node`], a [`Room`] wraps a [`concord_node::Room`], and
//! values cross the boundary as flat records ([`MessageItem`], [`Page`],
//! [`RoomInfo`], ...) with ids, cursors, addresses and tickets as strings.
//!
//! Three rules hold at the boundary:
//! - **One error type.** Every failure is a [`ConcordError`]; the conversion
//!   from node, core, ticket and parse errors lives in one place
//!   (`error.rs`). Malformed strings (tickets, cursors, ids, addresses) and a
//!   shut-down client come back as typed errors, never as panics.
//! - **One runtime.** Async methods run on one multi-threaded tokio runtime
//!   owned by this library (`runtime.rs`); the foreign side awaits them as
//!   coroutines (Kotlin), `async` (Swift) or asyncio (Python).
//! - **Listeners are foreign traits** ([`TimelineListener`],
//!   [`EventListener`]) and return a [`Subscription`] that stops delivery
//!   when cancelled or dropped. They are called on Rust threads, so they must be
//!   quick and must not block on the client.
//!
//! Bindings are generated from the compiled library by the `uniffi-bindgen`
//! binary of this crate (feature `cli`): see `ffi/build-bindings.sh`.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod client;
mod error;
mod records;
mod room;
mod runtime;
mod subscription;

pub use client::{Client, EventListener};
pub use error::ConcordError;
pub use records::{
    AuditEntry, ClientConfig, ClientEvent, DeliveryState, Member, MemberRole, MessageItem, Page,
    ReactionItem, RoomGovernance, RoomInfo, RoomOptions, SignalKind, TimelineDiff,
};
pub use room::{Room, TimelineListener};
pub use subscription::Subscription;

/// The node API these bindings wrap, for Rust callers.
pub use concord_node as node;

uniffi::setup_scaffolding!("concord");
