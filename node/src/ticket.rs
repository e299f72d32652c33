//! Room tickets: one copy-pasteable string with what a device needs to join
//! a room: the room's signed genesis (the room id is its hash, so a ticket
//! cannot point at a room its genesis did not found), addresses of peers
//! that hold the room, and optionally an invite that makes its holder a
//! member of a room of members only.
//!
//! Text form: `concord1` followed by the ticket bytes in lowercase base32
//! without padding (RFC 4648), which survives chat apps, URLs and
//! double-click selection. Bytes: version `u8`, genesis length `u16` and
//! the genesis, address count `u8`, then per address its length `u16` and
//! its multiaddr bytes; in version 2 the invite follows, its length `u16`
//! and its signed bytes. A ticket without an invite is written in version
//! 1, so builds that predate invites in tickets still read it. Parsing
//! checks the text length before decoding and every count and length
//! before reading, verifies the genesis and the invite, and fails with
//! [`TicketError`].

use std::fmt;
use std::str::FromStr;

use concord_core::{Genesis, Invite, RoomId};
use data_encoding::BASE32_NOPAD;
use multiaddr::Multiaddr;

/// What every ticket starts with; the digit is the text form's version.
pub const TICKET_PREFIX: &str = "concord1";
/// Most addresses in one ticket.
pub const MAX_TICKET_ADDRESSES: usize = 16;
/// Longest address, in bytes of its binary multiaddr form.
pub const MAX_ADDRESS_BYTES: usize = 256;
/// A ticket without an invite.
const TICKET_VERSION: u8 = 1;
/// A ticket with an invite after its addresses.
const TICKET_VERSION_INVITE: u8 = 2;
/// Largest genesis: the core's format caps it at 381 bytes.
const MAX_GENESIS_BYTES: usize = 512;
/// Largest invite: the core's invites are `INVITE_BYTES` (191); the rest
/// leaves room for a later invite format without a new ticket version.
const MAX_INVITE_BYTES: usize = 256;
const MAX_TICKET_BYTES: usize = 1
    + 2
    + MAX_GENESIS_BYTES
    + 1
    + MAX_TICKET_ADDRESSES * (2 + MAX_ADDRESS_BYTES)
    + 2
    + MAX_INVITE_BYTES;
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
    /// The invite does not decode or its signature fails.
    #[error("the ticket's invite is invalid: {0}")]
    Invite(concord_core::EnvelopeError),
    /// The invite admits to another room than the ticket's.
    #[error("the ticket's invite is for room {invite}, not the ticket's room {room}")]
    InviteRoom {
        /// The ticket's room.
        room: RoomId,
        /// The room the invite admits to.
        invite: RoomId,
    },
}

/// A room ticket: the room's genesis, where to reach peers holding it, and
/// perhaps an invite to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomTicket {
    genesis: Genesis,
    addresses: Vec<Multiaddr>,
    invite: Option<Invite>,
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
        Ok(Self { genesis, addresses, invite: None })
    }

    /// The ticket carrying `invite`, which must admit to the ticket's room
    /// (its signature was verified when it was decoded or issued).
    pub fn with_invite(mut self, invite: Invite) -> Result<Self, TicketError> {
        if invite.room() != self.room_id() {
            return Err(TicketError::InviteRoom { room: self.room_id(), invite: invite.room() });
        }
        self.invite = Some(invite);
        Ok(self)
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

    /// The invite the ticket carries, if any: joining with the ticket
    /// redeems it ([`crate::Node::join_ticket`]).
    pub fn invite(&self) -> Option<&Invite> {
        self.invite.as_ref()
    }

    fn to_bytes(&self) -> Vec<u8> {
        let genesis = self.genesis.as_bytes();
        let invite = self.invite.as_ref().map_or(0, |i| 2 + i.as_bytes().len());
        let mut out = Vec::with_capacity(4 + genesis.len() + 64 * self.addresses.len() + invite);
        out.push(if self.invite.is_some() { TICKET_VERSION_INVITE } else { TICKET_VERSION });
        out.extend_from_slice(&(genesis.len() as u16).to_be_bytes());
        out.extend_from_slice(genesis);
        out.push(self.addresses.len() as u8);
        for a in &self.addresses {
            out.extend_from_slice(&(a.as_ref().len() as u16).to_be_bytes());
            out.extend_from_slice(a.as_ref());
        }
        if let Some(invite) = &self.invite {
            out.extend_from_slice(&(invite.as_bytes().len() as u16).to_be_bytes());
            out.extend_from_slice(invite.as_bytes());
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, TicketError> {
        let mut rest = bytes;
        let version = take(&mut rest, 1, "version")?[0];
        if version != TICKET_VERSION && version != TICKET_VERSION_INVITE {
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
        let mut ticket = Self { genesis, addresses, invite: None };
        if version == TICKET_VERSION_INVITE {
            let len = take_u16(&mut rest, "invite length")?;
            if len > MAX_INVITE_BYTES {
                return Err(TicketError::Malformed("invite too long"));
            }
            let invite =
                Invite::from_bytes(take(&mut rest, len, "invite")?).map_err(TicketError::Invite)?;
            ticket = ticket.with_invite(invite)?;
        }
        if !rest.is_empty() {
            return Err(TicketError::Malformed("trailing bytes"));
        }
        Ok(ticket)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use concord_core::{ManualClock, MemoryStore, Replica, Role};

    use super::*;

    /// A room of members only with an invite to it, from a replica with a
    /// fixed key and clock, so every run sees the same bytes.
    fn room_and_invite(seed: u8) -> (Genesis, Invite) {
        let clock = Arc::new(ManualClock::new(1_750_000_000_000));
        let mut r = Replica::open_with_seed(MemoryStore::new(), clock, [seed; 32]).unwrap();
        let room = r.create_room_with("crew", &[]).unwrap();
        let invitee = Replica::open_with_seed(
            MemoryStore::new(),
            Arc::new(ManualClock::new(0)),
            [seed + 1; 32],
        )
        .unwrap()
        .author();
        let (invite, _) =
            r.invite(&room, Role::Member, Some(invitee), Some(1_750_000_100_000)).unwrap();
        (r.genesis(&room).unwrap().clone(), invite)
    }

    fn addresses() -> Vec<Multiaddr> {
        vec![
            "/ip4/127.0.0.1/tcp/4001".parse().unwrap(),
            "/ip6/::1/udp/4001/quic-v1".parse().unwrap(),
        ]
    }

    fn invite_ticket() -> RoomTicket {
        let (genesis, invite) = room_and_invite(5);
        RoomTicket::new(genesis, addresses()).unwrap().with_invite(invite).unwrap()
    }

    #[test]
    fn test_ticket_with_invite_round_trips_in_version_two() {
        let ticket = invite_ticket();
        let bytes = ticket.to_bytes();
        assert_eq!(bytes[0], TICKET_VERSION_INVITE);
        assert_eq!(RoomTicket::from_bytes(&bytes).unwrap(), ticket);
        let parsed: RoomTicket = ticket.to_string().parse().unwrap();
        assert_eq!(parsed, ticket);
        assert_eq!(parsed.invite().map(Invite::id), ticket.invite().map(Invite::id));
        assert_eq!(parsed.invite().unwrap().room(), parsed.room_id());
    }

    #[test]
    fn test_ticket_without_invite_stays_version_one() {
        let (genesis, _) = room_and_invite(5);
        let ticket = RoomTicket::new(genesis, addresses()).unwrap();
        let bytes = ticket.to_bytes();
        assert_eq!(bytes[0], TICKET_VERSION);
        let parsed = RoomTicket::from_bytes(&bytes).unwrap();
        assert_eq!(parsed, ticket);
        assert!(parsed.invite().is_none());
        // The same ticket with an invite is the old bytes, a new version
        // byte, and the invite after them.
        let with = invite_ticket().to_bytes();
        assert_eq!(with[1..bytes.len()], bytes[1..]);
    }

    #[test]
    fn test_every_truncation_is_a_typed_error() {
        let (genesis, _) = room_and_invite(5);
        for ticket in [RoomTicket::new(genesis, addresses()).unwrap(), invite_ticket()] {
            let bytes = ticket.to_bytes();
            for len in 0..bytes.len() {
                assert!(
                    RoomTicket::from_bytes(&bytes[..len]).is_err(),
                    "a ticket cut to {len} of {} bytes parsed",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn test_bit_flips_never_change_the_room_or_the_invite() {
        let ticket = invite_ticket();
        let bytes = ticket.to_bytes();
        let genesis = 3..3 + ticket.genesis().as_bytes().len();
        let invite = bytes.len() - ticket.invite().unwrap().as_bytes().len()..bytes.len();
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[at] ^= 1 << bit;
                // Only an address can change: the genesis and the invite
                // are signed.
                if let Ok(t) = RoomTicket::from_bytes(&flipped) {
                    assert!(!genesis.contains(&at) && !invite.contains(&at), "byte {at}");
                    assert_eq!(t.room_id(), ticket.room_id(), "byte {at} bit {bit}");
                    assert_eq!(t.invite(), ticket.invite(), "byte {at} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn test_foreign_malformed_and_oversized_invites_are_typed_errors() {
        let (genesis, _) = room_and_invite(5);
        let (_, foreign) = room_and_invite(9);
        let plain = RoomTicket::new(genesis, addresses()).unwrap();
        assert!(matches!(
            plain.clone().with_invite(foreign.clone()),
            Err(TicketError::InviteRoom { room, invite })
                if room == plain.room_id() && invite == foreign.room()
        ));
        // The same, written by hand: a ticket whose invite names another room.
        let with_invite = |invite: &[u8]| {
            let mut bytes = plain.to_bytes();
            bytes[0] = TICKET_VERSION_INVITE;
            bytes.extend_from_slice(&(invite.len() as u16).to_be_bytes());
            bytes.extend_from_slice(invite);
            bytes
        };
        assert!(matches!(
            RoomTicket::from_bytes(&with_invite(foreign.as_bytes())),
            Err(TicketError::InviteRoom { .. })
        ));
        // A forged invite, an empty one, one too long, trailing bytes.
        let mut forged = invite_ticket().invite().unwrap().as_bytes().to_vec();
        forged[60] ^= 1;
        assert!(matches!(
            RoomTicket::from_bytes(&with_invite(&forged)),
            Err(TicketError::Invite(_))
        ));
        assert!(matches!(RoomTicket::from_bytes(&with_invite(&[])), Err(TicketError::Invite(_))));
        assert_eq!(
            RoomTicket::from_bytes(&with_invite(&[0; MAX_INVITE_BYTES + 1])),
            Err(TicketError::Malformed("invite too long"))
        );
        let mut trailing = invite_ticket().to_bytes();
        trailing.push(0);
        assert_eq!(
            RoomTicket::from_bytes(&trailing),
            Err(TicketError::Malformed("trailing bytes"))
        );
        // A version-two ticket must carry its invite.
        let mut missing = plain.to_bytes();
        missing[0] = TICKET_VERSION_INVITE;
        assert_eq!(RoomTicket::from_bytes(&missing), Err(TicketError::Malformed("invite length")));
        assert_eq!(RoomTicket::from_bytes(&[3]), Err(TicketError::Version(3)));
    }

    #[test]
    fn test_the_largest_ticket_fits_the_text_cap() {
        let (genesis, invite) = room_and_invite(5);
        // `/dns4/NAME/tcp/1`: code, length (2 bytes), name, code, port.
        let name = "a".repeat(MAX_ADDRESS_BYTES - 6);
        let address: Multiaddr = format!("/dns4/{name}/tcp/1").parse().unwrap();
        assert_eq!(address.as_ref().len(), MAX_ADDRESS_BYTES);
        let ticket = RoomTicket::new(genesis, vec![address; MAX_TICKET_ADDRESSES])
            .unwrap()
            .with_invite(invite)
            .unwrap();
        let text = ticket.to_string();
        assert!(text.len() <= MAX_TICKET_CHARS, "{} > {MAX_TICKET_CHARS}", text.len());
        assert_eq!(text.parse::<RoomTicket>().unwrap(), ticket);
    }
}
