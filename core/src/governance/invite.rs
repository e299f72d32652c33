//! Invites: capabilities an admin or moderator signs to let someone join.

use std::fmt;

use crate::base::FORMAT_VERSION;
use crate::codec::{check_header, Reader, Writer};
use crate::error::{DecodeError, EnvelopeError};
use crate::ids::{AuthorId, RoomId};
use crate::keys::{self, DeviceKey};

use super::action::Role;

const INVITE_MAGIC: &[u8; 4] = b"CNCI";

/// Encoded size of every invite.
pub const INVITE_BYTES: usize = 4 + 1 + 32 + 16 + 32 + 1 + 1 + 32 + 8 + 64;

/// An invite's id: 16 random bytes chosen by its issuer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct InviteId(pub(crate) [u8; 16]);

impl InviteId {
    /// Wraps 16 raw bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
    /// The 16 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for InviteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A signed invite to one room: for one key, or for whoever presents it
/// first; with a role, and optionally an expiry. It is registered in the
/// room's governance by its issuer ([`super::Action::Invite`]) and redeemed
/// once ([`super::Action::Join`]); it travels to the invitee in a ticket.
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    room: RoomId,
    id: InviteId,
    issuer: AuthorId,
    role: Role,
    invitee: Option<AuthorId>,
    expires_millis: Option<u64>,
    bytes: Vec<u8>,
}

impl fmt::Debug for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invite")
            .field("id", &self.id)
            .field("room", &self.room)
            .field("issuer", &self.issuer)
            .field("role", &self.role)
            .field("invitee", &self.invitee)
            .field("expires_millis", &self.expires_millis)
            .finish()
    }
}

impl Invite {
    /// Signs an invite. `invitee` binds it to one key; otherwise the first
    /// key to redeem it joins. `expires_millis` (Unix milliseconds) bounds
    /// when it may be redeemed.
    pub fn issue(
        key: &DeviceKey,
        room: RoomId,
        id: InviteId,
        role: Role,
        invitee: Option<AuthorId>,
        expires_millis: Option<u64>,
    ) -> Self {
        let mut bytes = Vec::with_capacity(INVITE_BYTES);
        bytes.extend_from_slice(INVITE_MAGIC);
        bytes.put_u8(FORMAT_VERSION);
        bytes.extend_from_slice(room.as_bytes());
        bytes.extend_from_slice(&id.0);
        bytes.extend_from_slice(key.author().as_bytes());
        bytes.put_u8(role.to_u8());
        bytes.put_u8(u8::from(invitee.is_some()));
        bytes.extend_from_slice(invitee.as_ref().map_or(&[0u8; 32], |k| k.as_bytes()));
        bytes.put_u64(expires_millis.unwrap_or(0));
        let signature = key.sign(&bytes);
        bytes.extend_from_slice(&signature);
        Self { room, id, issuer: key.author(), role, invitee, expires_millis, bytes }
    }

    /// Decodes and verifies an invite from untrusted bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() != INVITE_BYTES {
            return Err(DecodeError::InvalidValue("invite length").into());
        }
        let mut r = Reader::new(bytes);
        check_header(&mut r, INVITE_MAGIC, "invite")?;
        let room = RoomId(r.array("room")?);
        let id = InviteId(r.array("invite id")?);
        let issuer = AuthorId(r.array("issuer")?);
        let role = Role::from_u8(r.u8("role")?)?;
        let invitee = match r.u8("invitee flag")? {
            0 => {
                if r.array::<32>("invitee")? != [0; 32] {
                    return Err(DecodeError::InvalidValue("invitee").into());
                }
                None
            }
            1 => Some(AuthorId(r.array("invitee")?)),
            _ => return Err(DecodeError::InvalidValue("invitee flag").into()),
        };
        let expires = r.u64("expiry")?;
        let signed_len = r.position();
        let signature: [u8; 64] = r.array("signature")?;
        r.finish()?;
        keys::verify(&issuer, &bytes[..signed_len], &signature)?;
        Ok(Self {
            room,
            id,
            issuer,
            role,
            invitee,
            expires_millis: (expires != 0).then_some(expires),
            bytes: bytes.to_vec(),
        })
    }

    /// The room it admits to.
    pub fn room(&self) -> RoomId {
        self.room
    }
    /// Its id.
    pub fn id(&self) -> InviteId {
        self.id
    }
    /// Who signed it.
    pub fn issuer(&self) -> AuthorId {
        self.issuer
    }
    /// The role the invitee joins with.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The one key it admits, if it is bound to one.
    pub fn invitee(&self) -> Option<AuthorId> {
        self.invitee
    }
    /// When it expires (Unix milliseconds), if ever.
    pub fn expires_millis(&self) -> Option<u64> {
        self.expires_millis
    }
    /// The signed encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn describe_invitee(&self) -> String {
        self.invitee.map_or_else(
            || "whoever redeems it first".to_owned(),
            |k| hex::encode(&k.as_bytes()[..4]),
        )
    }
}
