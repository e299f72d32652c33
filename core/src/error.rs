//! Error types of the core, one enum per area, each with a `Result` alias.
//!
//! Decoding untrusted bytes yields [`DecodeError`]; judging an envelope yields
//! [`EnvelopeError`]; the storage layer yields [`StoreError`]; the replica API
//! wraps all of them in [`Error`].

pub use crate::base::DecodeError;
use crate::base::Denied;
use crate::ids::{MessageId, RoomId};

/// Why an envelope was rejected. A rejected envelope leaves the replica unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes are not a well-formed envelope.
    #[error("malformed envelope: {0}")]
    Decode(#[from] DecodeError),
    /// The author field is not a valid Ed25519 public key.
    #[error("author is not a valid Ed25519 public key")]
    BadAuthorKey,
    /// The signature does not verify against the author's key.
    #[error("signature does not verify against the author key")]
    BadSignature,
    /// The envelope belongs to another room (for example, replayed from one).
    #[error("envelope is for room {found}, not {expected}")]
    WrongRoom {
        /// The room it was offered to.
        expected: RoomId,
        /// The room it was signed for.
        found: RoomId,
    },
    /// The room is not known to this replica.
    #[error("room {0} is not known to this replica")]
    UnknownRoom(RoomId),
    /// The update writes to a document other than its author's own.
    #[error("update touches a client id that is not the author's")]
    ForeignClient,
    /// The declared clock range does not match the update's contents.
    #[error("declared clock range does not match the update")]
    ClockMismatch,
    /// The update inserts nothing; every valid change inserts at least one item.
    #[error("update inserts nothing")]
    EmptyUpdate,
    /// The update bytes are not a valid yrs v1 update.
    #[error("update is not a valid yrs update: {0}")]
    BadUpdate(String),
    /// An attached blob does not match any hash the envelope names.
    #[error("attached blob does not match the envelope's blob hashes")]
    BlobMismatch,
    /// The author signed two different envelopes for the same place in its document.
    #[error("author signed two different envelopes for the same clock range")]
    Equivocation,
    /// The envelope cites governance heads this replica does not hold yet,
    /// and its author may not read the room by the governance held now, so
    /// it is not kept waiting: not a fault of the sender; it can be offered
    /// again once the governance arrives (catch-up sends it first).
    #[error("envelope cites governance changes this replica does not hold yet")]
    UnknownGovernance,
    /// The envelope would have to wait (for its author's earlier changes or
    /// for governance this replica does not hold), and the room already
    /// keeps as much waiting as it may: not a fault of the sender; a later
    /// catch-up offers it again once what it waits for is held.
    #[error("too much of the room is waiting for earlier changes; offer it again later")]
    PendingFull,
    /// The author may not write this change at the governance heads it cites
    /// (not a member, a read-only member posting, a member deleting others'
    /// messages).
    #[error("envelope not allowed by the room's governance: {0}")]
    Denied(Denied),
}

impl EnvelopeError {
    /// Whether the sender of an envelope refused with this error is at
    /// fault (a strike in catch-up, a rejection in gossip). An envelope
    /// refused only for now, because of what this replica holds or keeps
    /// waiting, is nobody's fault: a later catch-up offers it again.
    pub fn is_senders_fault(&self) -> bool {
        !matches!(self, Self::PendingFull | Self::UnknownGovernance)
    }
}

/// Errors from the storage layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be opened (missing permissions, corruption, a lock held).
    #[error("cannot open store: {0}")]
    Open(String),
    /// A stored record failed to decode: the store's contents are corrupt.
    #[error("corrupt store record in {tree}: {reason}")]
    Corrupt {
        /// The tree holding the record.
        tree: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// An I/O error while reading, writing or flushing.
    #[error("store I/O error: {0}")]
    Io(String),
    /// The store was written by a newer version of Concord.
    #[error("store schema version {found} is newer than this build supports ({supported})")]
    NewerSchema {
        /// The version found on disk.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
}

/// Errors of the replica API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage layer failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An envelope was rejected.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// Bytes could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The room is not known to this replica.
    #[error("unknown room {0}")]
    UnknownRoom(RoomId),
    /// No live message has this id in the room.
    #[error("unknown message {0}")]
    UnknownMessage(MessageId),
    /// The message was deleted; it cannot be edited, reacted to or marked read.
    #[error("message {0} was deleted")]
    MessageDeleted(MessageId),
    /// Only a message's author may edit or delete it.
    #[error("only the author of message {0} may change it")]
    NotAuthor(MessageId),
    /// An argument was out of range (too long, empty, malformed).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A governance action was refused or a governance change rejected.
    #[error(transparent)]
    Governance(#[from] GovError),
    /// The operating system could not provide randomness for a new device key.
    #[error("no randomness available for a new device key: {0}")]
    Randomness(String),
}

/// Result of the replica API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a governance change was refused. A refused change leaves the
/// governance unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GovError {
    /// The change is malformed or its signature does not verify.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The change belongs to another room.
    #[error("governance change for room {found}, not {expected}")]
    WrongRoom {
        /// This room.
        expected: RoomId,
        /// The change's room.
        found: RoomId,
    },
    /// The author may not perform the action at the change's causal past.
    #[error("governance change refused: {0}")]
    Denied(#[from] Denied),
    /// The change's operations are not exactly what its action writes.
    #[error("governance change does not match its action")]
    Forged,
    /// Too many changes wait for dependencies, in the room or from the
    /// change's author (a [`crate::PENDING_AUTHOR_SHARE`]th of
    /// [`crate::MAX_PENDING_GOV_CHANGES`]).
    #[error("too many governance changes wait for their dependencies")]
    TooManyPending,
    /// The change depends on changes this replica does not hold, and its
    /// author may not read the room by the governance held now, so it is
    /// not kept waiting: catch-up, which sends dependencies first, brings
    /// it again.
    #[error("governance change depends on changes not held here, from a key that is no reader")]
    MissingDependencies,
    /// Named heads are not in this room's governance.
    #[error("unknown governance heads")]
    UnknownHeads,
    /// The action is too large or malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The document could not be changed or read (a bug, not bad input).
    #[error("governance document: {0}")]
    Document(String),
}

impl GovError {
    /// Whether the sender of a change refused with this error is at fault
    /// (a strike in catch-up, a rejection in gossip). A change refused only
    /// for now, because of what this replica holds or keeps waiting, is
    /// nobody's fault. (A `Document` error counts against the sender: a
    /// change automerge cannot apply may be crafted.)
    pub fn is_senders_fault(&self) -> bool {
        match self {
            Self::Envelope(e) => e.is_senders_fault(),
            Self::TooManyPending | Self::MissingDependencies => false,
            _ => true,
        }
    }
}

/// Errors of a sync session. Any of them ends the session; what was applied
/// before stays applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The peer's message could not be decoded.
    #[error("bad sync message: {0}")]
    Decode(#[from] DecodeError),
    /// The peer's message is about another room.
    #[error("sync message for room {found}, expected {expected}")]
    WrongRoom {
        /// The session's room.
        expected: RoomId,
        /// The message's room.
        found: RoomId,
    },
    /// The peer broke the protocol (a message out of turn, too many flights).
    #[error("sync protocol violation: {0}")]
    Unexpected(&'static str),
    /// No message came in time.
    #[error("sync session timed out")]
    TimedOut,
    /// The session already ended.
    #[error("sync session is closed")]
    Closed,
    /// The local replica failed.
    #[error(transparent)]
    Replica(#[from] Error),
    /// The genesis a peer sent to have its room taken up does not verify.
    #[error("bad room genesis: {0}")]
    BadGenesis(Error),
}

impl SyncError {
    /// Whether the peer is at fault: its bytes did not decode, named another
    /// room, broke the protocol (a message out of turn, too many flights, a
    /// message after the session ended) or carried a genesis that does not
    /// verify. A session that timed out, or a failure of the local replica,
    /// is nobody's fault.
    pub fn is_peers_fault(&self) -> bool {
        match self {
            Self::Decode(_)
            | Self::WrongRoom { .. }
            | Self::Unexpected(_)
            | Self::Closed
            | Self::BadGenesis(_) => true,
            Self::TimedOut | Self::Replica(_) => false,
        }
    }
}
