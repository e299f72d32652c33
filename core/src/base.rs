//! The vocabulary every other module of the core shares: format versions,
//! the limits that several formats agree on, the decode error, a governance
//! head, roles and why a role refuses something.
//!
//! **Architecture invariant:** this module imports nothing from the crate.
//! Everything above it (codec, ids, keys, errors, envelopes, governance, the
//! replica) may import it, so the base of the crate has no cycles: envelopes
//! and governance no longer reach into each other for these, and governance
//! does not reach up into the replica for its share of what waits.

use std::fmt;

/// Format version written in every delivery, signal, invite and governance
/// change.
pub const FORMAT_VERSION: u8 = 1;

/// Format version written in genesis records and envelopes: version 2 added
/// a genesis's join rule and the governance heads an envelope cites.
/// Version 1 is still read (an open room; an envelope citing no heads).
pub const ROOM_FORMAT_VERSION: u8 = 2;

/// Format version of a genesis of an end-to-end encrypted room: version 3
/// adds the encryption flag. Unencrypted rooms are still written as
/// [`ROOM_FORMAT_VERSION`], and versions 1 and 2 are still read.
pub const GENESIS_FORMAT_VERSION: u8 = 3;

/// Most governance heads one envelope cites.
pub const MAX_CITED_HEADS: usize = 8;

/// Longest room name, in bytes of UTF-8.
pub const MAX_ROOM_NAME_BYTES: usize = 255;

/// One author may fill at most this fraction (1/N) of a room's limits on
/// what waits (the replica's `pending-1` and the governance changes waiting
/// for their dependencies), in count and in bytes, so that one key's junk
/// cannot fill them for everyone.
pub const PENDING_AUTHOR_SHARE: u64 = 4;

/// A governance head: the hash of an automerge change.
pub type GovHead = [u8; 32];

/// Why bytes could not be decoded. Every decoder in the crate returns this
/// instead of panicking, and checks sizes before it allocates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the named field was complete.
    #[error("truncated input: {what} is incomplete")]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// A length field or the whole input exceeds its cap.
    #[error("{what} is {len} bytes, more than the cap of {max}")]
    TooLarge {
        /// The field that is too large.
        what: &'static str,
        /// The declared or actual length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The input does not start with the expected magic bytes.
    #[error("not a Concord {what}: bad magic")]
    BadMagic {
        /// What was expected.
        what: &'static str,
    },
    /// The format version is not one this build understands.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// A field holds a value outside its domain.
    #[error("invalid value for {0}")]
    InvalidValue(&'static str),
    /// Bytes remain after a complete value.
    #[error("{0} trailing bytes after a complete value")]
    TrailingBytes(usize),
}

/// A member's role. Higher roles hold every right of the lower ones.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Role {
    /// Reads the room and may leave it; writes nothing else.
    ReadOnly,
    /// Posts, edits and deletes their own messages, reacts, marks read.
    Member,
    /// A member who also deletes anyone's message, sets the topic, and kicks,
    /// bans, invites and sets the roles of members and read-only members.
    Moderator,
    /// Every right: the name, settings, any role, kicks and bans of anyone.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [Role::ReadOnly, Role::Member, Role::Moderator, Role::Admin];

    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Role::ReadOnly => 0,
            Role::Member => 1,
            Role::Moderator => 2,
            Role::Admin => 3,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Role::ALL.get(usize::from(v)).copied().ok_or(DecodeError::InvalidValue("role"))
    }

    /// The role's name as stored in the document and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Member => "member",
            Role::Moderator => "moderator",
            Role::Admin => "admin",
        }
    }

    /// Parses a name written by [`Role::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role may post, edit and react (every role but read-only).
    pub fn may_post(self) -> bool {
        self >= Role::Member
    }

    /// Whether this role may delete other authors' messages.
    pub fn may_moderate(self) -> bool {
        self >= Role::Moderator
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an action was refused. Every replica reaches the same verdict for
/// the same change, because it is judged against the governance state at
/// the change's causal past, never against what arrived since.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// Only the room's creator founds the document, as its first change.
    #[error("only the room's creator may found its governance, as the first change")]
    NotFounder,
    /// The document is founded already, or not yet.
    #[error("the governance document is {0}")]
    Founding(&'static str),
    /// The author is not a member (or is banned) at the change's causal past.
    #[error("the author is not a member of the room")]
    NotMember,
    /// The author's role does not allow the action.
    #[error("a {role} may not {what}")]
    Role {
        /// The author's role.
        role: Role,
        /// What was attempted.
        what: &'static str,
    },
    /// The target's state does not allow the action (not a member, banned, …).
    #[error("{0}")]
    Target(&'static str),
    /// The invite does not admit this join or registration.
    #[error("invite refused: {0}")]
    Invite(&'static str),
}

/// A device's published encryption keys: the Curve25519 identity key of its
/// Olm account and the fallback key others encrypt room keys to. Published
/// in a room's governance by the device itself, so the device's signature
/// binds them to its author key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKeys {
    /// The Olm identity key.
    pub identity: [u8; 32],
    /// The Olm fallback key, which one-shot pre-key messages are made to.
    pub fallback: [u8; 32],
}

impl fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceKeys({})", self.fingerprint())
    }
}

impl DeviceKeys {
    /// Encoded length: identity ‖ fallback.
    pub const LEN: usize = 64;

    /// A short, human-comparable fingerprint of both keys (the first ten
    /// bytes of their blake3 hash in five groups of four hex digits), what
    /// a person compares out of band to check that a device is who it says.
    pub fn fingerprint(&self) -> String {
        let mut both = [0u8; Self::LEN];
        both[..32].copy_from_slice(&self.identity);
        both[32..].copy_from_slice(&self.fallback);
        let hash = blake3::hash(&both);
        hash.as_bytes()[..10]
            .chunks(2)
            .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The encoding: identity ‖ fallback.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..32].copy_from_slice(&self.identity);
        out[32..].copy_from_slice(&self.fallback);
        out
    }

    /// Decodes [`DeviceKeys::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != Self::LEN {
            return Err(DecodeError::InvalidValue("device keys length"));
        }
        let mut identity = [0u8; 32];
        identity.copy_from_slice(&bytes[..32]);
        let mut fallback = [0u8; 32];
        fallback.copy_from_slice(&bytes[32..]);
        Ok(Self { identity, fallback })
    }
}
