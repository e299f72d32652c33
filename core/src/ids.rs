//! Identifiers: authors (device keys), rooms, messages, blobs, hybrid logical
//! clock stamps, and the sort key that orders a room's timeline.

use std::fmt;
use std::str::FromStr;

use crate::base::DecodeError;

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub(crate) [u8; 32]);

        impl $name {
            /// Wraps 32 raw bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
            /// The 32 raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Eight hex digits are enough to tell ids apart in logs and test output.
                write!(f, "{}({})", stringify!($name), &hex::encode(self.0)[..8])
            }
        }

        impl FromStr for $name {
            type Err = DecodeError;
            fn from_str(s: &str) -> Result<Self, DecodeError> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out)
                    .map_err(|_| DecodeError::InvalidValue(stringify!($name)))?;
                Ok(Self(out))
            }
        }
    };
}

hash_id!(
    /// A device's Ed25519 public key: the author of everything the device writes.
    AuthorId
);
hash_id!(
    /// A room id: the blake3 hash of the room's signed genesis, so it certifies itself.
    RoomId
);
hash_id!(
    /// The blake3 hash of a content blob (a message body or an attachment).
    BlobHash
);

/// A message id: a UUIDv7, unique and ordered by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub(crate) uuid::Uuid);

impl MessageId {
    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
    /// Wraps 16 raw bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }
    /// The id as a UUID.
    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
    /// The 32-hex-digit form used as a key inside author documents.
    pub(crate) fn simple(&self) -> String {
        self.0.simple().to_string()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

impl FromStr for MessageId {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, DecodeError> {
        uuid::Uuid::parse_str(s).map(Self).map_err(|_| DecodeError::InvalidValue("MessageId"))
    }
}

/// A hybrid logical clock stamp: milliseconds since the Unix epoch in the high
/// 48 bits and a logical counter in the low 16 bits, so stamps compare as
/// integers and survive clocks that stall or step back.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc(pub(crate) u64);

impl Hlc {
    /// Number of low bits that hold the logical counter.
    pub const COUNTER_BITS: u32 = 16;

    /// Builds a stamp from wall-clock milliseconds and a logical counter.
    pub const fn new(millis: u64, counter: u16) -> Self {
        Self((millis << Self::COUNTER_BITS) | counter as u64)
    }
    /// The stamp as one integer (what is stored and signed).
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// Rebuilds a stamp from [`Hlc::as_u64`].
    pub const fn from_u64(raw: u64) -> Self {
        Self(raw)
    }
    /// Wall-clock milliseconds since the Unix epoch.
    pub const fn millis(self) -> u64 {
        self.0 >> Self::COUNTER_BITS
    }
    /// The logical counter.
    pub const fn counter(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({}.{})", self.millis(), self.counter())
    }
}

/// Where a message sits in its room: ordered by (HLC, author, id). Encoded
/// big-endian so byte order is sort order; this is also the timeline key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SortKey {
    /// When the message was posted.
    pub hlc: Hlc,
    /// Who posted it.
    pub author: AuthorId,
    /// Its id.
    pub id: MessageId,
}

impl SortKey {
    /// Encoded length in bytes.
    pub const LEN: usize = 8 + 32 + 16;

    /// Big-endian encoding: byte order equals sort order.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.hlc.0.to_be_bytes());
        out[8..40].copy_from_slice(&self.author.0);
        out[40..].copy_from_slice(self.id.as_bytes());
        out
    }

    /// Decodes [`SortKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != Self::LEN {
            return Err(DecodeError::InvalidValue("sort key length"));
        }
        let mut hlc = [0u8; 8];
        hlc.copy_from_slice(&bytes[..8]);
        let mut author = [0u8; 32];
        author.copy_from_slice(&bytes[8..40]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[40..]);
        Ok(Self {
            hlc: Hlc(u64::from_be_bytes(hlc)),
            author: AuthorId(author),
            id: MessageId::from_bytes(id),
        })
    }
}

/// An opaque position in a room's timeline, for paging. Its string form is
/// stable and safe to hand to an app and take back later.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Cursor(pub(crate) SortKey);

impl Cursor {
    /// The position this cursor names.
    pub fn sort_key(&self) -> SortKey {
        self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.to_bytes()))
    }
}

impl FromStr for Cursor {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, DecodeError> {
        let mut raw = [0u8; SortKey::LEN];
        hex::decode_to_slice(s, &mut raw).map_err(|_| DecodeError::InvalidValue("cursor"))?;
        SortKey::from_bytes(&raw).map(Cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sort_key_bytes_order_matches_tuple_order() {
        let a = SortKey {
            hlc: Hlc::new(5, 1),
            author: AuthorId([9; 32]),
            id: MessageId::from_bytes([1; 16]),
        };
        let b = SortKey { hlc: Hlc::new(5, 2), author: AuthorId([0; 32]), ..a };
        let c = SortKey { author: AuthorId([10; 32]), ..a };
        assert!(a < b && a.to_bytes() < b.to_bytes());
        assert!(a < c && a.to_bytes() < c.to_bytes());
        assert_eq!(SortKey::from_bytes(&a.to_bytes()), Ok(a));
    }

    #[test]
    fn test_cursor_round_trips_and_rejects_garbage() {
        let key = SortKey {
            hlc: Hlc::new(1_700_000_000_000, 3),
            author: AuthorId([7; 32]),
            id: MessageId::from_bytes([2; 16]),
        };
        let text = Cursor(key).to_string();
        assert_eq!(text.parse::<Cursor>(), Ok(Cursor(key)));
        assert!("zz".parse::<Cursor>().is_err());
        assert!(text[..10].parse::<Cursor>().is_err());
    }
}
