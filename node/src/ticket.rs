//! Room tickets: one copy-pasteable string with what a device needs to join
//! a room: the room's signed genesis (the room id is its hash, so a ticket
//! cannot point at a room its genesis did not found) and addresses of peers
//! that hold the room.
//!
//! Text form: `concord1` followed by the ticket bytes in lowercase base32
//! without padding (RFC 4648), which survives chat apps, URLs and
//! double-click selection. Bytes: version `u8` (1), genesis length `u16` and
//! the genesis, address count `u8`, then per address its length `u16` and
//! its multiaddr bytes. Parsing checks the text length before decoding and
//! every count and length before reading, and fails with [`TicketError`].

use std::fmt;
use std::str::FromStr;

use concord_core::{Genesis, RoomId};
use data_encoding::BASE32_NOPAD;
use multiaddr::Multiaddr;

/// What every ticket starts with; the digit is the text form's version.
pub const TICKET_PREFIX: &str = "concord1";
/// Most addresses in one ticket.
pub const MAX_TICKET_ADDRESSES: usize = 16;
/// Longest address, in bytes of its binary multiaddr form.
pub const MAX_ADDRESS_BYTES: usize = 256;
const TICKET_VERSION: u8 = 1;
/// Largest genesis: the core's format caps it at 381 bytes.
const MAX_GENESIS_BYTES: usize = 512;
const MAX_TICKET_BYTES: usize =
    1 + 2 + MAX_GENESIS_BYTES + 1 + MAX_TICKET_ADDRESSES * (2 + MAX_ADDRESS_BYTES);
/// Longest ticket text: the prefix and the base32 of the largest ticket.
pub const MAX_TICKET_CHARS: usize = TICKET_PREFIX.len() + MAX_TICKET_BYTES.div_ceil(5) * 8;

/// Why a ticket was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// The text does not start with [`TICKET_PREFIX`].
    #[error("not a Concord room ticket (it must start with {TICKET_PREFIX})")]
    Prefix,
    /// The text is longer than any ticket.
    #[error("a ticket is at most {MAX_TICKET_CHARS} characters, this one has {0}")]
    TooLong(usize),
    /// The text is not lowercase base32.
    #[error("the ticket is not valid base32")]
    Encoding,
    /// The bytes end early, carry trailing bytes, or break a cap.
    #[error("malformed ticket: {0}")]
    Malformed(&'static str),
    /// The ticket's format version is unknown to this build.
    #[error("unsupported ticket version {0}")]
    Version(u8),
    /// The genesis does not decode or its signature fails.
    #[error("the ticket's room genesis is invalid: {0}")]
    Genesis(#[from] concord_core::EnvelopeError),
    /// An address is not a valid multiaddr.
    #[error("the ticket holds an invalid address: {0}")]
    Address(String),
}

/// A room ticket: the room's genesis and where to reach peers holding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomTicket {
    genesis: Genesis,
    addresses: Vec<Multiaddr>,
}

impl RoomTicket {
    /// A ticket for the room founded by `genesis`, with at most
    /// [`MAX_TICKET_ADDRESSES`] addresses of at most [`MAX_ADDRESS_BYTES`].
    pub fn new(genesis: Genesis, addresses: Vec<Multiaddr>) -> Result<Self, TicketError> {
        if addresses.len() > MAX_TICKET_ADDRESSES {
            return Err(TicketError::Malformed("too many addresses"));
        }
        if addresses.iter().any(|a| a.as_ref().len() > MAX_ADDRESS_BYTES) {
            return Err(TicketError::Malformed("address too long"));
        }
        Ok(Self { genesis, addresses })
    }

    /// The room the ticket opens.
    pub fn room_id(&self) -> RoomId {
        self.genesis.room_id()
    }

    /// The room's signed genesis, for `Replica::join_room`.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// Addresses of peers holding the room.
    pub fn addresses(&self) -> &[Multiaddr] {
        &self.addresses
    }

    fn to_bytes(&self) -> Vec<u8> {
        let genesis = self.genesis.as_bytes();
        let mut out = Vec::with_capacity(4 + genesis.len() + 64 * self.addresses.len());
        out.push(TICKET_VERSION);
        out.extend_from_slice(&(genesis.len() as u16).to_be_bytes());
        out.extend_from_slice(genesis);
        out.push(self.addresses.len() as u8);
        for a in &self.addresses {
            out.extend_from_slice(&(a.as_ref().len() as u16).to_be_bytes());
            out.extend_from_slice(a.as_ref());
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, TicketError> {
        let mut rest = bytes;
        let version = take(&mut rest, 1, "version")?[0];
        if version != TICKET_VERSION {
            return Err(TicketError::Version(version));
        }
        let len = take_u16(&mut rest, "genesis length")?;
        if len > MAX_GENESIS_BYTES {
            return Err(TicketError::Malformed("genesis too long"));
        }
        let genesis = Genesis::from_bytes(take(&mut rest, len, "genesis")?)?;
        let count = take(&mut rest, 1, "address count")?[0] as usize;
        if count > MAX_TICKET_ADDRESSES {
            return Err(TicketError::Malformed("too many addresses"));
        }
        let mut addresses = Vec::with_capacity(count);
        for _ in 0..count {
            let len = take_u16(&mut rest, "address length")?;
            if len > MAX_ADDRESS_BYTES {
                return Err(TicketError::Malformed("address too long"));
            }
            let raw = take(&mut rest, len, "address")?.to_vec();
            addresses
                .push(Multiaddr::try_from(raw).map_err(|e| TicketError::Address(e.to_string()))?);
        }
        if !rest.is_empty() {
            return Err(TicketError::Malformed("trailing bytes"));
        }
        Ok(Self { genesis, addresses })
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], TicketError> {
    if rest.len() < n {
        return Err(TicketError::Malformed(what));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_u16(rest: &mut &[u8], what: &'static str) -> Result<usize, TicketError> {
    let b = take(rest, 2, what)?;
    Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
}

impl fmt::Display for RoomTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = BASE32_NOPAD.encode(&self.to_bytes()).to_ascii_lowercase();
        write!(f, "{TICKET_PREFIX}{text}")
    }
}

impl FromStr for RoomTicket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() > MAX_TICKET_CHARS {
            return Err(TicketError::TooLong(s.len()));
        }
        let body = s.strip_prefix(TICKET_PREFIX).ok_or(TicketError::Prefix)?;
        // Only the canonical lowercase form is a ticket.
        if body.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(TicketError::Encoding);
        }
        let bytes = BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| TicketError::Encoding)?;
        Self::from_bytes(&bytes)
    }
}
