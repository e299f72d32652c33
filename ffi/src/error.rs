//! The one error type of the bindings, and the single place where node,
//! core, ticket and parse errors become it.
//!
//! It is a flat error: the foreign side sees one exception class per
//! variant (`ConcordException.InvalidTicket` in Kotlin,
//! `ConcordError.InvalidTicket` in Swift and Python) carrying the message
//! text, which is all an app can act on. Matching on the variant is how an
//! app tells a bad argument from a closed client from a network failure.

use std::str::FromStr;

use concord_node::core::Error as CoreError;
use concord_node::{
    AuthorId, Cursor, Invite, MessageId, Multiaddr, NodeError, RoomId, RoomTicket, TicketError,
};

/// Every failure of the bindings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
#[non_exhaustive]
pub enum ConcordError {
    /// The client was shut down; nothing more can be asked of it.
    #[error("the client is closed")]
    Closed,
    /// The string is not a Concord room ticket.
    #[error("invalid ticket: {0}")]
    InvalidTicket(String),
    /// The string is not a timeline cursor (one from a `Page` or a
    /// `MessageItem`).
    #[error("invalid cursor: {0}")]
    InvalidCursor(String),
    /// The string is not a message id or a room id.
    #[error("invalid id: {0}")]
    InvalidId(String),
    /// The string is not a multiaddr (like `/ip4/127.0.0.1/tcp/0`).
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    /// An argument or a setting is out of range (too long, empty, zero).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// This device does not hold the room.
    #[error("unknown room {0}")]
    UnknownRoom(String),
    /// No live message has this id in the room.
    #[error("unknown message {0}")]
    UnknownMessage(String),
    /// The message was deleted; it cannot be edited, reacted to or marked read.
    #[error("message {0} was deleted")]
    MessageDeleted(String),
    /// Only a message's author may edit or delete it.
    #[error("only the author of message {0} may change it")]
    NotAuthor(String),
    /// The room's governance does not allow it: not a member, a role too
    /// low, a banned key, an invite that does not admit this device.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The data directory could not be opened, read or written.
    #[error("storage: {0}")]
    Storage(String),
    /// Data was refused as malformed or forged.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The network layer failed (listen, dial, a transport error).
    #[error("network: {0}")]
    Network(String),
    /// A catch-up with a peer failed.
    #[error("sync: {0}")]
    Sync(String),
    /// A bug or an environment failure (a task panicked, no randomness, no
    /// runtime). The client stays usable.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result of the bindings.
pub(crate) type Result<T, E = ConcordError> = std::result::Result<T, E>;

impl From<NodeError> for ConcordError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Closed => Self::Closed,
            NodeError::Network(e) => Self::Network(e),
            NodeError::InvalidConfig(e) => Self::InvalidInput(e),
            NodeError::Sync(e) => Self::Sync(e),
            NodeError::Ticket(e) => e.into(),
            NodeError::Invite(e) => Self::NotAllowed(e),
            NodeError::Core(e) => e.into(),
            NodeError::Panicked(e) => Self::Internal(e),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<CoreError> for ConcordError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Store(e) => Self::Storage(e.to_string()),
            CoreError::Envelope(e) => Self::Rejected(e.to_string()),
            CoreError::Decode(e) => Self::Rejected(e.to_string()),
            CoreError::UnknownRoom(id) => Self::UnknownRoom(id.to_string()),
            CoreError::UnknownMessage(id) => Self::UnknownMessage(id.to_string()),
            CoreError::MessageDeleted(id) => Self::MessageDeleted(id.to_string()),
            CoreError::NotAuthor(id) => Self::NotAuthor(id.to_string()),
            CoreError::InvalidInput(e) => Self::InvalidInput(e),
            CoreError::Governance(e) => Self::NotAllowed(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<TicketError> for ConcordError {
    fn from(e: TicketError) -> Self {
        Self::InvalidTicket(e.to_string())
    }
}

/// What a foreign listener's exception becomes: listeners declare
/// [`ConcordError`] so that an exception they throw is returned to Rust
/// (and logged) rather than turned into a panic by UniFFI.
impl From<uniffi::UnexpectedUniFFICallbackError> for ConcordError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Internal(format!("a listener threw: {}", e.reason))
    }
}

/// Parses a message id (a UUID string, as `MessageItem::id` gives).
pub(crate) fn message_id(s: &str) -> Result<MessageId> {
    MessageId::from_str(s.trim())
        .map_err(|_| ConcordError::InvalidId("not a message id (a UUID is expected)".into()))
}

/// Parses an author id (64 hex digits, as `Client::author_id` gives).
pub(crate) fn author_id(s: &str) -> Result<AuthorId> {
    AuthorId::from_str(s.trim()).map_err(|_| {
        ConcordError::InvalidId("not an author id (64 hex digits are expected)".into())
    })
}

/// Parses an invite (hex, as `Room::invite` gives).
pub(crate) fn invite(s: &str) -> Result<Invite> {
    let bytes = hex::decode(s.trim())
        .map_err(|_| ConcordError::InvalidInput("an invite is hex digits".into()))?;
    Invite::from_bytes(&bytes)
        .map_err(|e| ConcordError::InvalidInput(format!("invalid invite: {e}")))
}

/// Parses a room id (64 hex digits, as `RoomInfo::id` gives).
pub(crate) fn room_id(s: &str) -> Result<RoomId> {
    RoomId::from_str(s.trim())
        .map_err(|_| ConcordError::InvalidId("not a room id (64 hex digits are expected)".into()))
}

/// Parses a timeline cursor.
pub(crate) fn cursor(s: &str) -> Result<Cursor> {
    Cursor::from_str(s.trim()).map_err(|e| ConcordError::InvalidCursor(e.to_string()))
}

/// Parses a multiaddr.
pub(crate) fn address(s: &str) -> Result<Multiaddr> {
    Multiaddr::from_str(s.trim()).map_err(|e| ConcordError::InvalidAddress(e.to_string()))
}

/// Parses a room ticket.
pub(crate) fn ticket(s: &str) -> Result<RoomTicket> {
    Ok(RoomTicket::from_str(s)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_malformed_strings_are_typed_errors() {
        assert!(matches!(ticket("concord1!!"), Err(ConcordError::InvalidTicket(_))));
        assert!(matches!(ticket("hello"), Err(ConcordError::InvalidTicket(_))));
        assert!(matches!(cursor("zz"), Err(ConcordError::InvalidCursor(_))));
        assert!(matches!(message_id("42"), Err(ConcordError::InvalidId(_))));
        assert!(matches!(room_id("42"), Err(ConcordError::InvalidId(_))));
        assert!(matches!(author_id("42"), Err(ConcordError::InvalidId(_))));
        assert!(matches!(invite("zz"), Err(ConcordError::InvalidInput(_))));
        assert!(matches!(invite("00"), Err(ConcordError::InvalidInput(_))));
        assert!(matches!(address("tcp/1"), Err(ConcordError::InvalidAddress(_))));
    }

    #[test]
    fn test_node_errors_keep_their_kind() {
        assert_eq!(ConcordError::from(NodeError::Closed), ConcordError::Closed);
        let e = NodeError::Core(CoreError::InvalidInput("empty".into()));
        assert_eq!(ConcordError::from(e), ConcordError::InvalidInput("empty".into()));
        let e = NodeError::InvalidConfig("zero".into());
        assert_eq!(ConcordError::from(e), ConcordError::InvalidInput("zero".into()));
        let e = NodeError::Core(CoreError::NotAuthor(concord_node::MessageId::from_bytes([7; 16])));
        assert!(matches!(ConcordError::from(e), ConcordError::NotAuthor(_)));
        let e = NodeError::Invite("the invite was revoked".into());
        assert_eq!(
            ConcordError::from(e),
            ConcordError::NotAllowed("the invite was revoked".into())
        );
        let e = NodeError::Ticket(TicketError::Malformed("trailing bytes"));
        assert!(matches!(ConcordError::from(e), ConcordError::InvalidTicket(_)));
    }
}
