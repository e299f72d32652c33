//! Errors of the node API.

/// Errors of the node API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The replica thread has shut down; nothing more can be asked of it.
    #[error("the replica is closed")]
    Closed,
    /// A job panicked on the replica thread. The replica keeps serving: its
    /// operations are transactions, so a panic leaves nothing half-written.
    #[error("a replica job panicked: {0}")]
    Panicked(String),
    /// The replica has as much work queued for the network as it may: the
    /// gossiped message, sync request or catch-up that needed it was turned
    /// away (catch-up brings it again later).
    #[error("the replica is busy")]
    Busy,
    /// The network layer failed (listen, dial, publish, a transport error).
    #[error("network: {0}")]
    Network(String),
    /// A setting is out of its range; nothing was started.
    #[error("invalid node config: {0}")]
    InvalidConfig(String),
    /// The relay could not write what it received to its store; nothing was
    /// acknowledged, and the write is retried.
    #[error("relay store: {0}")]
    Mirror(String),
    /// A catch-up session failed.
    #[error("sync: {0}")]
    Sync(String),
    /// A ticket could not be made.
    #[error(transparent)]
    Ticket(#[from] crate::ticket::TicketError),
    /// The invite a ticket carried could not be redeemed (refused, or the
    /// room's governance never brought it); see [`crate::NodeEvent::InviteFailed`].
    #[error("invite: {0}")]
    Invite(String),
    /// The replica refused or failed an operation.
    #[error(transparent)]
    Core(#[from] concord_core::Error),
}

/// Result of the node API.
pub type Result<T, E = NodeError> = std::result::Result<T, E>;
